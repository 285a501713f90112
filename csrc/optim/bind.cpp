// Bindings of the optim kernels into fasttrain._C.optim.
#include "../bindings.h"

namespace ft {

void bind_optim(pybind11::module_ m) { (void)m; }

}  // namespace ft
