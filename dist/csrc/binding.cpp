// A plain C surface over PyTorch's c10d (the engine behind torch.distributed): a TCPStore for the
// rendezvous, a Gloo (CPU) or NCCL (CUDA) process group on it, and the few collectives the learner
// needs. Every entry point catches every C++ exception and returns it as a malloc'd message (NULL on
// success; the caller frees it with alp_dist_free_error), so no exception ever crosses into Rust.
//
// Tensors arrive as `at::Tensor*`: what tch's `Tensor::as_ptr()` holds (torch-sys's torch_api.h:
// `typedef torch::Tensor *tensor`).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ALP_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <thread>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

// How often each rank writes its heartbeat to the store, and how long a failed collective watches the
// others' heartbeats to tell which rank is gone.
constexpr std::chrono::milliseconds kBeatEvery{500};
constexpr std::chrono::milliseconds kBeatWatch{1500};

std::string beat_key(int rank) {
  return "alp_dist/beat/" + std::to_string(rank);
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int rank;
  int world_size;
  // Collectives this rank has entered; published with the heartbeat.
  std::atomic<int64_t> entered{0};
  // The heartbeat: its own store connection, a thread writing "BEATS:ENTERED" every kBeatEvery.
  c10::intrusive_ptr<c10d::Store> beat_store;
  std::thread beat;
  std::mutex beat_mutex;
  std::condition_variable beat_cv;
  bool beat_stop = false;

  void start_heartbeat() {
    beat_store = store->clone();
    beat_store->setTimeout(std::min(timeout, std::chrono::milliseconds(5000)));
    beat = std::thread([this] {
      int64_t beats = 0;
      std::unique_lock<std::mutex> lock(beat_mutex);
      while (!beat_stop) {
        std::string value = std::to_string(beats++) + ":" + std::to_string(entered.load());
        try {
          beat_store->set(beat_key(rank), std::vector<uint8_t>(value.begin(), value.end()));
        } catch (...) {
          return; // the store is gone (rank 0 ended): nothing left to tell
        }
        beat_cv.wait_for(lock, kBeatEvery, [this] { return beat_stop; });
      }
    });
  }

  ~Group() {
    {
      std::lock_guard<std::mutex> lock(beat_mutex);
      beat_stop = true;
    }
    beat_cv.notify_all();
    if (beat.joinable()) {
      beat.join();
    }
  }
};

char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown C++ exception";
  }
}

// Runs `body`; returns NULL, or the message of whatever it threw (c10::Error without its C++ backtrace).
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (...) {
    return copy_message(message_of(std::current_exception()));
  }
}

// Each other rank's heartbeat "BEATS:ENTERED" (empty when it never wrote one).
std::vector<std::string> read_beats(const Group& g) {
  std::vector<std::string> out(g.world_size);
  for (int r = 0; r < g.world_size; ++r) {
    if (r != g.rank && g.beat_store->check({beat_key(r)})) {
      auto v = g.beat_store->get(beat_key(r));
      out[r] = std::string(v.begin(), v.end());
    }
  }
  return out;
}

// After a failed collective: which ranks stopped beating (dead or frozen) and which are alive but
// behind (have not entered this collective). Takes kBeatWatch.
std::string diagnose(const Group& g) {
  if (!g.beat_store) {
    return "";
  }
  std::ostringstream out;
  try {
    auto before = read_beats(g);
    std::this_thread::sleep_for(kBeatWatch);
    auto after = read_beats(g);
    int64_t mine = g.entered.load();
    for (int r = 0; r < g.world_size; ++r) {
      if (r == g.rank) {
        continue;
      }
      auto colon = after[r].find(':');
      if (after[r].empty() || before[r] == after[r]) {
        out << "; rank " << r << " stopped (no heartbeat for " << kBeatWatch.count()
            << " ms: dead or frozen)";
      } else if (colon != std::string::npos && std::stoll(after[r].substr(colon + 1)) < mine) {
        out << "; rank " << r << " is alive but has not reached this collective (it entered "
            << after[r].substr(colon + 1) << ", this is number " << mine << ")";
      }
    }
  } catch (...) {
    out << "; the store on rank 0 is unreachable (" << message_of(std::current_exception())
        << "): rank 0 is probably dead";
  }
  return out.str();
}

// A collective: counted in the heartbeat; a failure's message says which ranks look gone.
template <typename F>
char* collective(Group& g, F&& body) {
  g.entered.fetch_add(1);
  try {
    body();
    return nullptr;
  } catch (...) {
    std::string message = message_of(std::current_exception());
    return copy_message(message + diagnose(g));
  }
}

// Waits for a collective with the group's timeout; a failed or timed-out collective throws.
void finish(const Group& g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g.timeout)) {
    TORCH_CHECK(false, "collective did not finish within ", g.timeout.count(), " ms");
  }
}

std::vector<at::Tensor> borrow(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(tensors[i] != nullptr && tensors[i]->defined(), "tensor ", i, " is undefined");
    out.push_back(*tensors[i]);
  }
  return out;
}

// Tensors of one dtype and device, flattened into buckets of at most `bucket_bytes` (a tensor larger
// than that is a bucket of its own), so that a list of many small gradients costs a few collectives.
// c10d's list argument means replicas of ONE tensor, not a list of tensors, hence the flattening.
using Bucket = std::vector<at::Tensor>;

std::vector<Bucket> buckets(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  std::map<std::pair<int, std::string>, std::vector<Bucket>> by_kind;
  std::vector<std::pair<int, std::string>> order;
  for (const auto& t : tensors) {
    auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    auto& list = by_kind[key];
    if (list.empty()) {
      order.push_back(key);
    }
    int64_t bytes = 0;
    if (!list.empty()) {
      for (const auto& x : list.back()) {
        bytes += x.numel() * x.element_size();
      }
    }
    if (list.empty() || bytes + t.numel() * t.element_size() > bucket_bytes) {
      list.emplace_back();
    }
    list.back().push_back(t);
  }
  std::vector<Bucket> out;
  for (const auto& key : order) {
    for (auto& b : by_kind[key]) {
      out.push_back(std::move(b));
    }
  }
  return out;
}

// Runs `op` on each bucket as one contiguous tensor, and writes the result back into the tensors.
template <typename Op>
void per_bucket(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes, Op&& op) {
  for (auto& bucket : buckets(tensors, bucket_bytes)) {
    if (bucket.size() == 1 && bucket[0].is_contiguous()) {
      op(bucket[0]);
      continue;
    }
    std::vector<at::Tensor> flat;
    flat.reserve(bucket.size());
    for (const auto& t : bucket) {
      flat.push_back(t.reshape({-1}));
    }
    at::Tensor joined = at::cat(flat);
    op(joined);
    int64_t offset = 0;
    for (auto& t : bucket) {
      t.copy_(joined.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

c10::intrusive_ptr<c10d::Backend> make_gloo(const Group& g, const char* host, int loopback) {
  auto opts = c10d::ProcessGroupGloo::Options::create(g.timeout);
  const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
  if (loopback) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  } else if (iface != nullptr && iface[0] != '\0') {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  opts->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, g.rank, g.world_size, opts);
}

c10::intrusive_ptr<c10d::Backend> make_nccl(const Group& g) {
#ifdef ALP_DIST_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = g.timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(g.store, g.rank, g.world_size, opts);
#else
  (void)g;
  TORCH_CHECK(
      false,
      "NCCL is not compiled into alp-dist: the libtorch it was built against has no libtorch_cuda.so "
      "or no NCCL headers (see dist/build.rs)");
#endif
}

} // namespace

extern "C" {

void alp_dist_free_error(char* message) {
  std::free(message);
}

int alp_dist_has_nccl() {
#ifdef ALP_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

// backend: 0 = Gloo, 1 = NCCL. loopback (Gloo): bind to `host` itself instead of this machine's
// hostname (MASTER_ADDR 127.0.0.1: every rank on this machine). store_server: this rank starts the
// TCPStore (rank 0, unless torchrun's agent already hosts it: then every rank is a client).
char* alp_dist_new(
    const char* host,
    uint16_t port,
    int rank,
    int world_size,
    int64_t timeout_ms,
    int backend,
    int loopback,
    int store_server,
    void** out) {
  *out = nullptr;
  return guarded([&] {
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    g->rank = rank;
    g->world_size = world_size;
    c10d::TCPStoreOptions so;
    so.port = port;
    so.isServer = store_server != 0;
    so.numWorkers = static_cast<size_t>(world_size);
    so.waitWorkers = true;
    so.timeout = g->timeout;
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    g->backend = backend == 1 ? make_nccl(*g) : make_gloo(*g, host, loopback);
    g->start_heartbeat();
    *out = g.release();
  });
}

void alp_dist_free(void* group) {
  delete static_cast<Group*>(group);
}

char* alp_dist_all_reduce_sum(void* group, at::Tensor* const* tensors, size_t n, int64_t bucket_bytes) {
  Group& g = *static_cast<Group*>(group);
  return collective(g, [&] {
    auto list = borrow(tensors, n);
    per_bucket(list, bucket_bytes, [&](at::Tensor& t) {
      std::vector<at::Tensor> one{t};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      opts.timeout = g.timeout;
      finish(g, g.backend->allreduce(one, opts));
    });
  });
}

char* alp_dist_broadcast(void* group, at::Tensor* const* tensors, size_t n, int root, int64_t bucket_bytes) {
  Group& g = *static_cast<Group*>(group);
  return collective(g, [&] {
    TORCH_CHECK(root >= 0 && root < g.world_size, "broadcast root ", root, " is not a rank of ", g.world_size);
    auto list = borrow(tensors, n);
    per_bucket(list, bucket_bytes, [&](at::Tensor& t) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = g.timeout;
      finish(g, g.backend->broadcast(one, opts));
    });
  });
}

// outputs: world_size tensors shaped like input, filled with every rank's input in rank order.
char* alp_dist_all_gather(void* group, at::Tensor* input, at::Tensor* const* outputs, size_t n) {
  Group& g = *static_cast<Group*>(group);
  return collective(g, [&] {
    TORCH_CHECK(static_cast<int>(n) == g.world_size, "all_gather needs ", g.world_size, " outputs, got ", n);
    std::vector<at::Tensor> in{*input};
    std::vector<std::vector<at::Tensor>> out{borrow(outputs, n)};
    c10d::AllgatherOptions opts;
    opts.timeout = g.timeout;
    finish(g, g.backend->allgather(out, in, opts));
  });
}

char* alp_dist_barrier(void* group) {
  Group& g = *static_cast<Group*>(group);
  return collective(g, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = g.timeout;
    finish(g, g.backend->barrier(opts));
  });
}

} // extern "C"
