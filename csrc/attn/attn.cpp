// ISA selection for the attention kernels (the kernels themselves: attn_impl.h, one copy per ISA).
#include "attn.h"

#include "../dispatch.h"

namespace ft::attn {

const Kernels& kernels() {
  switch (current_isa()) {
#if FT_X86
    case Isa::avx512: return avx512::table();
    case Isa::avx2: return avx2::table();
#endif
    default: return scalar::table();
  }
}

}  // namespace ft::attn
