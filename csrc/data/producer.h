// The loader's native producer: std::threads that fill a ring of preallocated batch buffers ahead of
// the consumer, never touching Python (so never the GIL). fasttrain/data/_native.py drives it.
//
// Protocol. Batch b of the pass [first, end) goes to slot b % slots. A thread may claim batch b once
// the consumer has released batch b - slots (or b - slots < first), so a slot is written only after
// the consumer gave it back; the consumer releases batches in order, so one counter (`released`)
// says which slots are free. Ready batches are the ones the consumer has not taken yet; with
// slots = ahead + 1, `ahead` batches wait ready while the consumer holds the one it was given last.
// A batch is a pure function of (spec, b): the thread that fills it does not matter.
//
// Shared words. The consumer's steady state makes no call into this class: it reads "is batch b
// in slot s" and writes "batches < b are released" through a memoryview over `shared()` (aligned
// int64 words, atomic on x86-64 and AArch64), because on a busy box even one cold pybind11 call
// per batch showed up as data wait. Threads that find no free slot poll `released` (0.5 ms,
// doubling up to 4 ms) while `ahead` ready batches cover the delay; the consumer wakes them
// (kick / wait) only when it runs low.
#pragma once
#include <atomic>
#include <condition_variable>
#include <memory>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data.h"

namespace ft::data {

struct ProducerSpec {
  // Order: batch b holds rank-local positions [b * batch_size, min((b + 1) * batch_size, rank_samples)).
  uint64_t n = 0, seed = 0, epoch = 0;
  bool shuffle = true;
  int64_t rank = 0, world = 1, batch_size = 1, rank_samples = 0;
  int64_t first = 0, end = 0;  // batches of this pass
  // Work: fused fields (outs per slot: one per plan) or token windows (outs per slot: x, y).
  std::vector<FieldPlan> plans;
  bool windows = false;
  uintptr_t tokens = 0;
  int token_code = 0;
  int64_t block = 0, phase = 0;  // window start = sample index * block + phase
  int threads = 1, slots = 2;
  // Fault injection for the shutdown/error tests: at batch fault_batch, kind 1 throws a
  // std::runtime_error, kind 2 blocks until the producer is stopped.
  int64_t fault_batch = -1;
  int fault_kind = 0;
};

class Producer {
 public:
  // outs[s][f]: address of output f of slot s (each with room for batch_size rows). Starts the threads.
  Producer(ProducerSpec spec, std::vector<std::vector<uintptr_t>> outs);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Consumer side. wait: 1 when batch b is ready, 0 on timeout, -1 when stopped; rethrows the
  // exception that filling batch b raised.
  int wait(int64_t b, int timeout_ms);
  // Gives batch b's slot back (b must be the oldest batch not yet released); new_outs, if not empty,
  // replaces the slot's buffers (the consumer still holds the old ones).
  void release(int64_t b, const std::vector<uintptr_t>& new_outs);
  void kick();  // wakes threads polling for a slot
  // Shared words: [0, slots) the batch each slot holds once filled without error (else an older
  // batch or -1); kReleased: batches below it are released (the consumer writes it); kClaim: the
  // next batch a thread will claim; kPolling: threads polling for a free slot.
  int64_t* shared() { return reinterpret_cast<int64_t*>(shared_.get()); }
  int64_t shared_size() const { return spec_.slots + 3; }
  int64_t kReleased() const { return spec_.slots; }
  void stop();  // threads finish the batch they are filling, then exit; wait() returns -1
  void join();
  // Introspection: batches filled and not yet released, and whether every thread is idle (waiting
  // for a free slot, or done) within timeout_ms.
  std::vector<int64_t> ready() const;
  bool wait_idle(int timeout_ms);
  bool wait_exit(int timeout_ms);
  bool wait_consumer(int timeout_ms);  // the consumer is blocked in wait() (tests interrupt it there)  // every thread has returned (end of the pass, or stopped)
  int running() const;
  int64_t rows(int64_t b) const;

  static void stop_all();  // interpreter exit: stop and join every live producer

 private:
  void run();
  void fill(int64_t b, int slot, std::vector<int64_t>& idx, FillScratch& scratch);

  const ProducerSpec spec_;
  const FillContext ctx_;
  std::vector<std::vector<uintptr_t>> outs_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_, idle_cv_;
  int64_t claim_;
  std::unique_ptr<std::atomic<int64_t>[]> shared_;
  std::vector<int64_t> slot_batch_;  // the batch a slot holds once filled (with or without error), else -1
  std::vector<std::exception_ptr> slot_error_;
  bool stop_ = false, consumer_waiting_ = false;
  int busy_ = 0, running_ = 0;
  std::vector<std::thread> threads_;
  std::mutex join_mu_;
};

}  // namespace ft::data
