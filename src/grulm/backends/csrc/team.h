// The OpenMP team the fused CPU kernels run on: who owns which rows, and how an exception in
// one thread reaches the caller.

#pragma once

#include <c10/core/ScalarType.h>
#include <omp.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

namespace grulm {

// The rows [b0, b1) of B that thread k of n owns: near-equal blocks.
struct Rows {
  int64_t b0, b1;
  int64_t count() const { return b1 - b0; }
};

inline Rows rows_of(int64_t B, int k, int n) { return {B * k / n, B * (k + 1) / n}; }

// Runs a thread's share of a step unless some thread has failed; records the first exception
// so that it can be rethrown after the parallel region (every thread still meets every barrier).
class TeamErrors {
 public:
  template <typename F>
  void run(const F& f) {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

// Runs `body` on a team of n threads. Its barriers are orphaned directives: with n == 1 there
// is no parallel region at all, so they do nothing and the products inside may use BLAS
// threads. (Inside an active region BLAS runs single-threaded; inside a one-thread region it
// would start nested teams of its own.)
template <typename F>
void in_team(int n, const F& body) {
  if (n > 1) {
#pragma omp parallel num_threads(n)
    body();
  } else {
    body();
  }
}

// Calls run(0.0) for float64, else run(0.0f): the kernels are generic lambdas over the scalar
// type rather than AT_DISPATCH_FLOATING_TYPES, whose macro arguments cannot hold OpenMP pragmas.
template <typename F>
void dispatch_floating(c10::ScalarType type, const F& run) {
  if (type == c10::kDouble) {
    run(0.0);
  } else {
    run(0.0f);
  }
}

}  // namespace grulm
