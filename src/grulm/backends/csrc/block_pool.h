// Large buffers for the kernels' outputs, saved tensors and packed operands, kept for reuse
// from one call to the next.
//
// Why: every training step allocates and frees the same few large buffers (the gates and
// states saved for the backward, the gradients, the projected inputs, the packed weights).
// glibc serves blocks that large with fresh pages from mmap and unmaps them when they are
// freed, so each step the OS faults every page in again and zeroes it: on the large models
// that is a sizeable part of the step. Here a freed block of at least kMinPooled bytes goes to
// a free list instead, and the next request of the same size (the next step's) takes it back
// with its pages already in place. At most kMaxCached bytes wait on the list: beyond that the
// blocks that have waited longest go back to the system (after a change of sizes, as from
// training to evaluation, the old sizes leave first).

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/alignment.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace grulm {

class BlockPool {
 public:
  static constexpr size_t kMinPooled = size_t{1} << 20;
  static constexpr size_t kMaxCached = size_t{1} << 30;

  // The one pool of the process. Never destroyed: tensors freed during the process's exit
  // still give their blocks back to it.
  static BlockPool& instance() {
    static BlockPool* pool = new BlockPool();
    return *pool;
  }

  // A block of `bytes` (a multiple of the alignment), aligned as ATen aligns its own: of the
  // kept ones of that size, the one given back last (the likeliest still in cache).
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto [first, last] = free_.equal_range(bytes);
      if (first != last) {
        const auto newest = std::max_element(first, last, by_age);
        void* block = newest->second.block;
        free_.erase(newest);
        cached_ -= bytes;
        return block;
      }
    }
    void* block = std::aligned_alloc(c10::gAlignment, bytes);
    TORCH_CHECK(block != nullptr, "grulm cpu backend: out of memory: could not allocate ",
                bytes, " bytes");
    return block;
  }

  // Keeps the block for the next request of its size, dropping the blocks that have waited
  // longest if the list would grow past kMaxCached (a block larger than that is dropped).
  void give(void* block, size_t bytes) {
    std::vector<void*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes > kMaxCached) {
        dropped.push_back(block);
      } else {
        while (cached_ + bytes > kMaxCached) {
          const auto oldest = std::min_element(free_.begin(), free_.end(), by_age);
          dropped.push_back(oldest->second.block);
          cached_ -= oldest->first;
          free_.erase(oldest);
        }
        free_.emplace(bytes, Cached{block, ++age_});
        cached_ += bytes;
      }
    }
    for (void* old : dropped) std::free(old);
  }

 private:
  struct Cached {
    void* block;
    uint64_t age;  // when it was given back: larger is more recent
  };

  static bool by_age(const std::pair<const size_t, Cached>& a,
                     const std::pair<const size_t, Cached>& b) {
    return a.second.age < b.second.age;
  }

  std::mutex mutex_;
  std::multimap<size_t, Cached> free_;
  size_t cached_ = 0;
  uint64_t age_ = 0;
};

// at::empty, from the pool for buffers of BlockPool::kMinPooled bytes or more.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t used = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (used < BlockPool::kMinPooled) return at::empty(sizes, options);
  const size_t bytes = (used + c10::gAlignment - 1) / c10::gAlignment * c10::gAlignment;
  void* block = BlockPool::instance().take(bytes);
  return at::from_blob(
      block, sizes, [bytes](void* data) { BlockPool::instance().give(data, bytes); }, options);
}

}  // namespace grulm
