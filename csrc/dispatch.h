// Runtime ISA selection: decided once from cpuid at import, overridable (FASTTRAIN_ISA or set_isa)
// so one machine can test every path.
#pragma once
#include <string>
#include <vector>

#include "common.h"

namespace ft {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
bool cpu_supports(Isa isa);
Isa best_isa();
std::vector<std::string> available_isas();  // best first
Isa current_isa();
// Throws std::invalid_argument (-> ValueError) for an unknown name or an ISA this CPU lacks.
void set_isa(const std::string& name);
const KernelTable& kernels();

}  // namespace ft
