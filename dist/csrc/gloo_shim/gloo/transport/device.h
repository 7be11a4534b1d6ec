// Declaration shim: see ../../README.md. Gloo devices and buffers only travel behind smart pointers.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
