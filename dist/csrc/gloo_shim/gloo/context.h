// Declaration shim: see ../README.md. Only what c10d/ProcessGroupGloo.hpp names.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  // Declared only: ProcessGroupGloo::setTimeout (inline, never called by the binding) names it.
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
