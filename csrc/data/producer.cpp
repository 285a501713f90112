// The loader's native producer (see producer.h for the slot protocol).
#include "producer.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>
#include <string>

namespace ft::data {

namespace {
// Every live producer, so interpreter exit can stop their threads before the arrays they read and
// the buffers they write are freed (a std::thread still joinable at exit would also abort).
std::mutex g_live_mu;
std::set<Producer*> g_live;
}  // namespace

Producer::Producer(ProducerSpec spec, std::vector<std::vector<uintptr_t>> outs)
    : spec_(std::move(spec)), ctx_(spec_.plans), outs_(std::move(outs)), claim_(spec_.first) {
  static_assert(sizeof(std::atomic<int64_t>) == sizeof(int64_t) && std::atomic<int64_t>::is_always_lock_free,
                "the consumer reads the shared words as plain int64");
  const size_t per_slot = spec_.windows ? 2 : spec_.plans.size();
  if (spec_.slots < 1 || int(outs_.size()) != spec_.slots) throw std::invalid_argument("Producer: need one outs list per slot");
  for (const auto& o : outs_)
    if (o.size() != per_slot) throw std::invalid_argument("Producer: each slot needs one output per field");
  if (spec_.batch_size < 1 || spec_.threads < 1) throw std::invalid_argument("Producer: batch_size and threads must be >= 1");
  if (spec_.world < 1 || spec_.rank < 0 || spec_.rank >= spec_.world) throw std::invalid_argument("Producer: need 0 <= rank < world");
  if (spec_.rank_samples > 0 && uint64_t((spec_.rank_samples - 1) * spec_.world + spec_.rank) >= spec_.n)
    throw std::invalid_argument("Producer: rank_samples exceeds the data");
  slot_batch_.assign(size_t(spec_.slots), -1);
  shared_.reset(new std::atomic<int64_t>[size_t(shared_size())]);
  for (int64_t i = 0; i < spec_.slots; ++i) shared_[i].store(-1);
  shared_[kReleased()].store(spec_.first);
  shared_[kReleased() + 1].store(spec_.first);
  shared_[kReleased() + 2].store(0);
  slot_error_.assign(size_t(spec_.slots), nullptr);
  {
    std::lock_guard<std::mutex> g(g_live_mu);
    g_live.insert(this);
  }
  const int64_t batches = std::max<int64_t>(spec_.end - spec_.first, 0);
  const int n = int(std::min<int64_t>(spec_.threads, batches));
  busy_ = running_ = n;
  threads_.reserve(size_t(n));
  for (int t = 0; t < n; ++t) threads_.emplace_back([this] { run(); });
}

Producer::~Producer() {
  stop();
  join();
  std::lock_guard<std::mutex> g(g_live_mu);
  g_live.erase(this);
}

int64_t Producer::rows(int64_t b) const {
  return std::max<int64_t>(0, std::min(spec_.batch_size, spec_.rank_samples - b * spec_.batch_size));
}

void Producer::fill(int64_t b, int slot, std::vector<int64_t>& idx, FillScratch& scratch) {
  if (b == spec_.fault_batch) {
    if (spec_.fault_kind == 1) throw std::runtime_error("injected producer fault at batch " + std::to_string(b));
    if (spec_.fault_kind == 2) {
      std::unique_lock<std::mutex> lk(mu_);
      ready_cv_.wait(lk, [&] { return stop_; });  // not work_cv_: release() wakes one waiter there
      return;
    }
  }
  const int64_t n = rows(b);
  sample_indices(spec_.n, spec_.seed, spec_.epoch, spec_.shuffle, spec_.rank, spec_.world, b * spec_.batch_size, n,
                 idx.data());
  // outs_[slot] changes only in release(), which the consumer calls for a slot no thread is filling.
  const uintptr_t* outs = outs_[size_t(slot)].data();
  if (spec_.windows) {
    for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = idx[size_t(i)] * spec_.block + spec_.phase;
    window_rows(spec_.tokens, spec_.token_code, idx.data(), 0, n, spec_.block, reinterpret_cast<int64_t*>(outs[0]),
                reinterpret_cast<int64_t*>(outs[1]));
  } else {
    fill_rows(ctx_, outs, idx.data(), 0, n, spec_.seed, spec_.epoch, scratch);
  }
}

void Producer::run() {
  std::vector<int64_t> idx(size_t(spec_.batch_size));
  FillScratch scratch(ctx_);
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    auto can_claim = [&] {
      return stop_ || claim_ >= spec_.end || claim_ < shared_[kReleased()].load(std::memory_order_acquire) + spec_.slots;
    };
    if (!can_claim()) {
      if (--busy_ == 0) idle_cv_.notify_all();
      // Poll for a free slot (0.5 ms, doubling up to 4 ms): the consumer publishes releases through
      // the shared words without a call, and waking a thread on every release preempted the
      // consumer inside next() on a busy 2-core box (~30 us a batch, measured).
      shared_[kReleased() + 2].fetch_add(1);
      auto poll = std::chrono::microseconds(500);
      while (!work_cv_.wait_for(lk, poll, can_claim)) poll = std::min(2 * poll, std::chrono::microseconds(4000));
      shared_[kReleased() + 2].fetch_sub(1);
      ++busy_;
    }
    if (stop_ || claim_ >= spec_.end) {
      work_cv_.notify_all();  // the other threads waiting for a slot have nothing left to claim either
      break;
    }
    const int64_t b = claim_++;
    shared_[kReleased() + 1].store(claim_);
    const int slot = int(b % spec_.slots);
    lk.unlock();
    std::exception_ptr err;
    try {
      fill(b, slot, idx, scratch);
    } catch (...) {  // re-raised on the consumer, in order, when it reaches batch b
      err = std::current_exception();
    }
    lk.lock();
    slot_batch_[size_t(slot)] = b;
    slot_error_[size_t(slot)] = err;
    if (!err) shared_[slot].store(b, std::memory_order_release);  // after the batch's bytes
    if (consumer_waiting_) ready_cv_.notify_all();
  }
  --busy_;
  --running_;
  idle_cv_.notify_all();
  ready_cv_.notify_all();
}

int Producer::wait(int64_t b, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  const size_t s = size_t(b % spec_.slots);
  auto done = [&] { return stop_ || slot_batch_[s] == b || (running_ == 0 && claim_ <= b); };
  if (!done()) {
    work_cv_.notify_all();  // threads polling for a slot: this consumer waits anyway
    consumer_waiting_ = true;
    idle_cv_.notify_all();  // wait_consumer()
    ready_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), done);
    consumer_waiting_ = false;
  }
  if (stop_) return -1;
  if (slot_batch_[s] != b) {
    if (running_ == 0 && claim_ <= b) return -1;  // beyond this pass: nothing will fill it
    return 0;
  }
  if (slot_error_[s]) {
    std::exception_ptr e = slot_error_[s];
    lk.unlock();
    std::rethrow_exception(e);
  }
  return 1;
}

void Producer::release(int64_t b, const std::vector<uintptr_t>& new_outs) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (b != shared_[kReleased()].load()) throw std::logic_error("Producer.release: batches must be released in order");
    const size_t s = size_t(b % spec_.slots);
    if (!new_outs.empty()) {
      if (new_outs.size() != outs_[s].size()) throw std::invalid_argument("Producer.release: wrong number of outputs");
      outs_[s] = new_outs;
    }
    shared_[kReleased()].store(b + 1, std::memory_order_release);
    // While more batches are in flight than the threads refill in parallel, the polling threads
    // find the slot soon enough (see run()).
    if (claim_ - (b + 1) > spec_.threads) return;
  }
  work_cv_.notify_one();
}

void Producer::kick() { work_cv_.notify_all();
}

void Producer::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  ready_cv_.notify_all();
}

void Producer::join() {
  std::lock_guard<std::mutex> g(join_mu_);
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

std::vector<int64_t> Producer::ready() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<int64_t> out;
  for (size_t s = 0; s < slot_batch_.size(); ++s)
    if (slot_batch_[s] >= 0 && !slot_error_[s]) out.push_back(slot_batch_[s]);
  std::sort(out.begin(), out.end());
  return out;
}

bool Producer::wait_idle(int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  return idle_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return busy_ == 0; });
}

bool Producer::wait_exit(int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  return idle_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return running_ == 0; });
}

bool Producer::wait_consumer(int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  return idle_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return consumer_waiting_; });
}

int Producer::running() const {
  std::lock_guard<std::mutex> g(mu_);
  return running_;
}

void Producer::stop_all() {
  // A destructor erases its producer under g_live_mu only after its own stop + join, so every
  // pointer in g_live stays valid while we hold the lock.
  std::lock_guard<std::mutex> g(g_live_mu);
  for (Producer* p : g_live) p->stop();
  for (Producer* p : g_live) p->join();
}

}  // namespace ft::data
