#include "dispatch.h"

#include <atomic>
#include <stdexcept>

namespace ft {
namespace {
std::atomic<int> g_isa{-1};  // -1: not chosen yet
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool cpu_supports(Isa isa) {
#if FT_X86
  // libgcc's cpu model also checks XCR0, i.e. that the OS saves the wide registers.
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  switch (isa) {
    case Isa::avx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Isa::avx2: return avx2;
    default: return true;
  }
#else
  return isa == Isa::scalar;
#endif
}

Isa best_isa() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (cpu_supports(isa)) return isa;
  return Isa::scalar;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar})
    if (cpu_supports(isa)) out.emplace_back(isa_name(isa));
  return out;
}

Isa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = int(best_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return Isa(v);
}

void set_isa(const std::string& name) {
  Isa isa;
  if (name == "avx512") isa = Isa::avx512;
  else if (name == "avx2") isa = Isa::avx2;
  else if (name == "scalar") isa = Isa::scalar;
  else if (name == "auto" || name.empty()) isa = best_isa();
  else throw std::invalid_argument("unknown ISA '" + name + "': use one of avx512, avx2, scalar, auto");
  if (!cpu_supports(isa)) {
    std::string ok;
    for (const auto& s : available_isas()) ok += (ok.empty() ? "" : ", ") + s;
    throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU; available: " + ok);
  }
  g_isa.store(int(isa), std::memory_order_relaxed);
}

const KernelTable& kernels() {
  switch (current_isa()) {
#if FT_X86
    case Isa::avx512: return avx512::table();
    case Isa::avx2: return avx2::table();
#endif
    default: return scalar::table();
  }
}

}  // namespace ft
