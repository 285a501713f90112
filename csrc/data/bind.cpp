// Bindings of the data kernels into fasttrain._C.data.
#include "../bindings.h"

namespace ft {

void bind_data(pybind11::module_ m) { (void)m; }

}  // namespace ft
