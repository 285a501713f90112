// Durable atomic file writes in one call without the GIL. The checkpoint writer thread did this
// in Python: a dozen syscalls, each returning to the interpreter and taking the GIL back from the
// training thread (measured: ~1 ms of training-thread time per checkpoint on the 2-core box).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "bindings.h"

namespace py = pybind11;

namespace {

struct Failure {
  int err = 0;
  std::string what;
};

// One writev per IOV_MAX buffers: on ext4 every write() call of a file also starts a journal handle
// for its mtime, and a checkpoint is ~40 buffers (skeleton, tensors, padding).
bool writev_all(int fd, const std::vector<std::pair<const char*, size_t>>& parts) {
  std::vector<iovec> iov;
  iov.reserve(parts.size());
  for (const auto& [p, n] : parts)
    if (n) iov.push_back({const_cast<char*>(p), n});
  size_t i = 0;
  while (i < iov.size()) {
    const ssize_t w = ::writev(fd, iov.data() + i, int(std::min<size_t>(iov.size() - i, IOV_MAX)));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    size_t left = size_t(w);  // skip what was written; a short write resumes mid-buffer
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < iov.size()) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return true;
}

// The two halves of a durable write, for callers that want the CPU work (copying the bytes into the
// page cache) on their own thread and only the waiting (fsync) on another one.
// recycle: a file to reuse as tmp (renamed to tmp, overwritten in place, truncated), or "" / a
// missing file for a new one. Overwriting a file whose pages are still in the page cache skips the
// page (and block) allocation (benchmarks/bench_checkpoint_io.py: staging 1.24x-1.42x faster than
// into a new file, 1.5x-1.7x with the fsync).
Failure write_begin(const std::string& tmp, const std::vector<std::pair<const char*, size_t>>& parts, int& fd_out,
                    const std::string& recycle = {}) {
  int fd = -1;
  const bool reused = !recycle.empty() && ::rename(recycle.c_str(), tmp.c_str()) == 0;
  if (reused && (fd = ::open(tmp.c_str(), O_WRONLY | O_CLOEXEC)) < 0) {
    const Failure f{errno, tmp};
    ::unlink(tmp.c_str());  // claimed but unusable: leave no temp file behind
    return f;
  }
  if (!reused) fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return {errno, tmp};
  off_t total = 0;
  for (const auto& [p, n] : parts) total += off_t(n);
  bool ok = writev_all(fd, parts);
  if (ok && reused) ok = ::ftruncate(fd, total) == 0;  // drop the old file's longer tail
  if (!ok) {
    const Failure f{errno, tmp};
    ::close(fd);
    ::unlink(tmp.c_str());
    return f;
  }
  fd_out = fd;
  return {};
}

// durable=false skips both fsyncs (log files: whole or old after a crash, maybe not the newest).
Failure write_commit(int fd, const std::string& tmp, const std::string& path, bool durable = true) {
  Failure f;
  bool ok = !durable || ::fsync(fd) == 0;
  if (!ok) f = {errno, tmp};
  if (::close(fd) != 0 && ok) f = {errno, tmp}, ok = false;
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) f = {errno, path}, ok = false;
  if (!ok) {
    ::unlink(tmp.c_str());
    return f;
  }
  if (!durable) return f;
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd < 0) return {errno, dir};
  if (::fsync(dfd) != 0) f = {errno, dir};
  ::close(dfd);
  return f;
}

// tmp is created exclusively next to path, written, fsynced, renamed over path; then the directory
// is fsynced so the rename itself is durable. On failure tmp is removed.
Failure write_durable(const std::string& path, const std::string& tmp, const std::vector<std::pair<const char*, size_t>>& parts,
                      bool durable) {
  int fd = -1;
  const Failure f = write_begin(tmp, parts, fd);
  return f.err ? f : write_commit(fd, tmp, path, durable);
}

// --- checkpoint directory pruning (fasttrain.train.checkpoint.prune_checkpoints) -------------------
// In C++ so that the writer thread runs it without the GIL: in Python each of its dozen syscalls
// returned to the interpreter and took the GIL back from the training thread.

// The decimal number at s[i..] (advancing i), -1 if there is none.
long long parse_num(const std::string& s, size_t& i) {
  const size_t start = i;
  long long v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 18) v = v * 10 + (s[i++] - '0');
  return i == start ? -1 : v;
}

bool eat(const std::string& s, size_t& i, const char* lit) {
  const size_t n = std::strlen(lit);
  if (s.compare(i, n, lit) != 0) return false;
  i += n;
  return true;
}

// "step-N.ckpt" -> N, else -1.
long long step_of(const std::string& name) {
  size_t i = 0;
  if (!eat(name, i, "step-")) return -1;
  const long long n = parse_num(name, i);
  return n >= 0 && eat(name, i, ".ckpt") && i == name.size() ? n : -1;
}

// The writing process of a temp file ".step-N.ckpt.PID.K.tmp" or ".recycle.PID.tmp", else -1.
long long tmp_owner(const std::string& name) {
  size_t i = 0;
  long long pid = -1;
  if (eat(name, i, ".step-")) {
    if (parse_num(name, i) < 0 || !eat(name, i, ".ckpt.") || (pid = parse_num(name, i)) < 0 || !eat(name, i, ".") ||
        parse_num(name, i) < 0)
      return -1;
  } else if (!eat(name, i, ".recycle.") || (pid = parse_num(name, i)) < 0) {
    return -1;
  }
  return eat(name, i, ".tmp") && i == name.size() ? pid : -1;
}

Failure prune_dir(const std::string& dir, long long keep, const std::string& recycle) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return errno == ENOENT ? Failure{} : Failure{errno, dir};
  std::vector<std::pair<long long, std::string>> steps;
  std::vector<std::string> stale;
  const long long self = ::getpid();
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (const long long n = step_of(name); n >= 0) {
      steps.emplace_back(n, name);
    } else if (const long long pid = tmp_owner(name); pid > 0 && pid != self && pid <= INT_MAX) {
      // Only a process that is gone: kill(pid, 0) fails with ESRCH (EPERM: alive, someone else's).
      if (::kill(pid_t(pid), 0) != 0 && errno == ESRCH) stale.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(steps.begin(), steps.end());
  const size_t n_old = steps.size() > size_t(keep) ? steps.size() - size_t(keep) : 0;
  for (size_t k = 0; k < n_old; ++k) {
    const std::string path = dir + "/" + steps[k].second;
    // rename replaces (deletes) a parked file that nobody claimed; ENOENT: already gone.
    const int rc = recycle.empty() ? ::unlink(path.c_str()) : ::rename(path.c_str(), recycle.c_str());
    if (rc != 0 && errno != ENOENT) return {errno, path};
  }
  for (const auto& name : stale) ::unlink((dir + "/" + name).c_str());  // best effort
  return {};
}

// parts: buffer-protocol objects, or (address, nbytes, owner...) tuples for memory the caller keeps
// alive (a tensor's data_ptr: one call instead of four to make a buffer of it).
std::vector<std::pair<const char*, size_t>> spans_of(const py::list& parts, std::vector<py::buffer_info>& infos) {
  std::vector<std::pair<const char*, size_t>> spans;
  for (const auto& obj : parts) {
    if (py::isinstance<py::tuple>(obj)) {
      const auto t = py::reinterpret_borrow<py::tuple>(obj);
      if (t.size() < 2) throw py::value_error("a (address, nbytes, ...) part needs two integers");
      spans.emplace_back(reinterpret_cast<const char*>(t[0].cast<uintptr_t>()), t[1].cast<size_t>());
      continue;
    }
    infos.push_back(py::reinterpret_borrow<py::buffer>(obj).request());
    const auto& bi = infos.back();
    spans.emplace_back(static_cast<const char*>(bi.ptr), size_t(bi.size * bi.itemsize));
  }
  return spans;
}

// CRC-32C (Castagnoli), the checkpoint checksum (FTCKPT03): the SSE4.2 crc32 instruction where the
// CPU has it (three chains: ~30 us per MB here, vs ~0.6 ms for SHA-256), a table otherwise.
// Detects any burst of <= 32 corrupted bits and random corruption except with probability 2^-32;
// it guards against storage and truncation faults, not against tampering.
constexpr uint32_t kCrcPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> r{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kCrcPoly & (0u - (c & 1u)));
      r[i] = c;
    }
    return r;
  }();
  return t;
}

uint32_t crc32c_table(uint32_t crc, const unsigned char* p, size_t n) {
  const auto& t = crc_table();
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return crc;
}

// Shifting a CRC register over zeros (to combine the CRCs of adjacent spans): polynomial product mod P
// in the reflected representation (bit 31 is x^0). The register update is linear: the register after
// span A then span B equals shift(reg after A, |B|) xor (register over B from 0).
uint32_t multmodp(uint32_t a, uint32_t b) {  // a != 0
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1u) ? (b >> 1) ^ kCrcPoly : b >> 1;
  }
  return p;
}

// x^(8 * nbytes) mod P, by squaring: x^(2^k) for k < 64 are tabulated once.
uint32_t x8nmodp(uint64_t nbytes) {
  static const std::array<uint32_t, 64> x2n = [] {
    std::array<uint32_t, 64> t{};
    uint32_t p = 1u << 30;  // x^1
    for (auto& e : t) e = p, p = multmodp(p, p);
    return t;
  }();
  uint32_t p = 1u << 31;  // x^0
  for (unsigned k = 3; nbytes; nbytes >>= 1, ++k)
    if (nbytes & 1u) p = multmodp(x2n[k], p);
  return p;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles and a throughput of 1 per cycle here: one dependent
// chain runs at ~8 bytes per 3 cycles (~0.1 ms per MB), three independent chains over thirds of the
// span, combined by shifting, at ~3x that. Spans below 3 KiB use one chain (the combine costs ~1 us).
__attribute__((target("sse4.2"))) uint64_t crc32c_chain(uint64_t c, const unsigned char* p, size_t n) {
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
  }
  uint32_t c32 = uint32_t(c);
  for (; n > 0; --n, ++p) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const unsigned char* p, size_t n) {
  if (n < 3072) return uint32_t(crc32c_chain(crc, p, n));
  const size_t third = n / 24 * 8;  // a multiple of 8 bytes
  const unsigned char *p1 = p + third, *p2 = p + 2 * third;
  uint64_t c0 = crc, c1 = 0, c2 = 0;
  for (size_t i = 0; i < third; i += 8) {
    uint64_t w0, w1, w2;
    std::memcpy(&w0, p + i, 8);
    std::memcpy(&w1, p1 + i, 8);
    std::memcpy(&w2, p2 + i, 8);
    c0 = _mm_crc32_u64(c0, w0);
    c1 = _mm_crc32_u64(c1, w1);
    c2 = _mm_crc32_u64(c2, w2);
  }
  const uint32_t shift = x8nmodp(third);
  uint32_t c = multmodp(shift, uint32_t(c0)) ^ uint32_t(c1);
  c = multmodp(shift, c) ^ uint32_t(c2);
  return uint32_t(crc32c_chain(c, p + 3 * third, n - 3 * third));
}
#endif

// Running CRC-32C: start with crc = 0, feed consecutive spans, the result is the CRC of their
// concatenation (the pre/post inversion is done here).
uint32_t crc32c_update(uint32_t crc, const unsigned char* p, size_t n) {
  uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  c = hw ? crc32c_hw(c, p, n) : crc32c_table(c, p, n);
#else
  c = crc32c_table(c, p, n);
#endif
  return ~c;
}

[[noreturn]] void raise_failure(const Failure& f) {
  errno = f.err;
  PyErr_SetFromErrnoWithFilename(PyExc_OSError, f.what.c_str());
  throw py::error_already_set();
}

}  // namespace

namespace ft {

void bind_io(py::module_ m) {
  m.def(
      "write_file_durable",
      [](const std::string& path, const std::string& tmp, const py::list& parts, bool durable) {
        // The buffers stay referenced by `parts` (and the caller) while the GIL is released.
        std::vector<py::buffer_info> infos;
        const auto spans = spans_of(parts, infos);
        Failure f;
        {
          py::gil_scoped_release nogil;
          f = write_durable(path, tmp, spans, durable);
        }
        if (f.err) raise_failure(f);
      },
      py::arg("path"), py::arg("tmp"), py::arg("parts"), py::arg("durable") = true,
      "Writes the concatenated buffers to tmp, fsyncs, renames over path and fsyncs the directory, "
      "all with the GIL released (durable=False: no fsyncs). Raises OSError naming the file on failure "
      "(tmp removed).");

  m.def(
      "crc32c",
      [](const py::list& parts, uint32_t crc) {
        std::vector<py::buffer_info> infos;
        const auto spans = spans_of(parts, infos);
        py::gil_scoped_release nogil;
        for (const auto& [p, n] : spans) crc = crc32c_update(crc, reinterpret_cast<const unsigned char*>(p), n);
        return crc;
      },
      py::arg("parts"), py::arg("crc") = 0u,
      "CRC-32C (Castagnoli) of the concatenated buffers, continuing from `crc` (0 to start); GIL released.");

  m.def(
      "write_file_begin",
      [](const std::string& tmp, const py::list& parts, const std::string& recycle) {
        std::vector<py::buffer_info> infos;
        const auto spans = spans_of(parts, infos);
        int fd = -1;
        Failure f;
        {
          py::gil_scoped_release nogil;
          f = write_begin(tmp, spans, fd, recycle);
        }
        if (f.err) raise_failure(f);
        return fd;
      },
      py::arg("tmp"), py::arg("parts"), py::arg("recycle") = std::string(),
      "Writes the concatenated buffers to tmp (GIL released) and returns the open fd for "
      "write_file_commit. tmp is created exclusively, or, when the file `recycle` exists, that file is "
      "renamed to tmp and overwritten in place (its cached pages are reused). Raises OSError naming the "
      "file on failure (tmp removed).");

  m.def(
      "write_checkpoint_begin",
      [](const std::string& tmp, const py::bytes& magic, size_t header_len, const py::list& parts,
         const std::string& recycle) {
        const std::string mg = magic;
        if (mg.size() != 8 || header_len < 20) throw py::value_error("write_checkpoint_begin: 8-byte magic, header_len >= 20");
        std::vector<py::buffer_info> infos;
        auto spans = spans_of(parts, infos);
        std::string header(header_len, '\0');
        int fd = -1;
        Failure f;
        {
          py::gil_scoped_release nogil;
          uint32_t crc = 0;
          uint64_t n = 0;
          for (const auto& [p, len] : spans) crc = crc32c_update(crc, reinterpret_cast<const unsigned char*>(p), len), n += len;
          std::memcpy(header.data(), mg.data(), 8);
          for (int i = 0; i < 4; ++i) header[8 + i] = char((crc >> (8 * i)) & 0xFFu);  // little-endian
          for (int i = 0; i < 8; ++i) header[12 + i] = char((n >> (8 * i)) & 0xFFu);
          spans.insert(spans.begin(), {header.data(), header.size()});
          f = write_begin(tmp, spans, fd, recycle);
        }
        if (f.err) raise_failure(f);
        return fd;
      },
      py::arg("tmp"), py::arg("magic"), py::arg("header_len"), py::arg("parts"), py::arg("recycle") = std::string(),
      "write_file_begin of a checkpoint: a header_len-byte header (magic, CRC-32C of the concatenated parts "
      "as u32 LE, their length as u64 LE, zeros) and then the parts; one call with the GIL released.");

  m.def(
      "write_file_commit",
      [](int fd, const std::string& tmp, const std::string& path, long long prune_keep, const std::string& recycle) {
        Failure f;
        {
          py::gil_scoped_release nogil;
          f = write_commit(fd, tmp, path);
          if (!f.err && prune_keep > 0) {
            const size_t slash = path.find_last_of('/');
            f = prune_dir(slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1)), prune_keep, recycle);
          }
        }
        if (f.err) raise_failure(f);
      },
      py::arg("fd"), py::arg("tmp"), py::arg("path"), py::arg("prune_keep") = 0, py::arg("recycle") = std::string(),
      "fsyncs and closes fd (from write_file_begin), renames tmp over path and fsyncs the directory, "
      "GIL released; then, when prune_keep > 0, prune_checkpoints(path's directory, prune_keep, recycle). "
      "Raises OSError naming the file on failure (tmp removed).");

  m.def(
      "prune_checkpoints",
      [](const std::string& dir, long long keep, const std::string& recycle) {
        if (keep < 1) throw py::value_error("prune_checkpoints: keep must be >= 1");
        Failure f;
        {
          py::gil_scoped_release nogil;
          f = prune_dir(dir, keep, recycle);
        }
        if (f.err) raise_failure(f);
      },
      py::arg("dir"), py::arg("keep"), py::arg("recycle") = std::string(),
      "Deletes all step-N.ckpt files in dir but the newest `keep` (or, when recycle is a path, renames them "
      "there: the last one renamed stays), and the temp files of fasttrain writes whose process is gone. "
      "GIL released.");
}

}  // namespace ft
