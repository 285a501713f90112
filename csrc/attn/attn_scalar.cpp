// Portable attention kernels (no ISA flags).
#include "attn_impl.h"

namespace ft::attn::scalar {

const Kernels& table() {
  static const Kernels k{"scalar", forward<PortableOps>, backward<PortableOps>};
  return k;
}

}  // namespace ft::attn::scalar
