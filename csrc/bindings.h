// One pybind11 module, fasttrain._C, assembled from one binding function per feature. Each feature
// keeps its C++ in its own folder and binds into its own submodule (_C.optim, _C.data, _C.quant),
// so features never edit each other's files.
#pragma once
#include <pybind11/pybind11.h>

namespace ft {

void bind_core(pybind11::module_ m);   // csrc/bind_core.cpp: ISA selection, multi-tensor norm/clip
void bind_io(pybind11::module_ m);     // csrc/io.cpp: durable atomic file writes without the GIL
void bind_optim(pybind11::module_ m);  // csrc/optim/bind.cpp
void bind_data(pybind11::module_ m);   // csrc/data/bind.cpp
void bind_quant(pybind11::module_ m);  // csrc/quant/bind.cpp
void bind_attn(pybind11::module_ m);   // csrc/attn/bind.cpp
void apply_isa_env();                   // FASTTRAIN_ISA, applied once at import

}  // namespace ft
