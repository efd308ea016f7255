// Large buffers for the kernels' outputs, saved tensors and packed operands, kept for reuse
// from one call to the next.
//
// Why: every training step allocates and frees the same few large buffers (the gates and
// states saved for the backward, the gradients, the projected inputs, the packed weights).
// glibc serves blocks that large with fresh pages from mmap and unmaps them when they are
// freed, so each step the OS faults every page in again and zeroes it: on the large models
// that is a sizeable part of the step. Here a freed block of at least kMinPooled bytes goes to
// a free list instead, and the next request of the same size (the next step's) takes it back
// with its pages already in place. At most kMaxCached bytes wait on the list; beyond that a
// freed block goes back to the system.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/alignment.h>

#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

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

  // A block of `bytes` (a multiple of the alignment), aligned as ATen aligns its own.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        cached_ -= bytes;
        return block;
      }
    }
    void* block = std::aligned_alloc(c10::gAlignment, bytes);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }

  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= kMaxCached) {
        free_.emplace(bytes, block);
        cached_ += bytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// at::empty, from the pool for buffers of BlockPool::kMinPooled bytes or more.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t size : sizes) numel *= size;
  const size_t used = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (used < BlockPool::kMinPooled) return at::empty(sizes, options);
  const size_t bytes = (used + c10::gAlignment - 1) / c10::gAlignment * c10::gAlignment;
  void* block = BlockPool::instance().take(bytes);
  return at::from_blob(
      block, sizes, [bytes](void* data) { BlockPool::instance().give(data, bytes); }, options);
}

}  // namespace grulm
