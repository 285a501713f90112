// Bindings of the quant kernels into fasttrain._C.quant.
#include "../bindings.h"

namespace ft {

void bind_quant(pybind11::module_ m) { (void)m; }

}  // namespace ft
