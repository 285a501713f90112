// The portable attention kernels compiled with AVX2 + FMA flags (the auto-vectorizer does the rest).
#include "attn_impl.h"

namespace ft::attn::avx2 {

const Kernels& table() {
  static const Kernels k{"avx2", forward<PortableOps>, backward<PortableOps>};
  return k;
}

}  // namespace ft::attn::avx2
