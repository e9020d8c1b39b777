// Numbers and shapes for TORCH_CHECK messages, formatted without std::ostream.
//
// Why: on the H100 device image (extensions built by /opt/gcc's g++, run against the system libstdc++),
// streaming an integer into a TORCH_CHECK message crashed the process: SIGSEGV in
// std::ostream::_M_insert<long> inside mishbench_C.so (cuda-gdb backtrace, 2026-11-25), i.e. a wrong-shape
// x killed Python instead of raising. String and const char* insertions were fine there, so every number
// in a message goes through std::to_string first; c10::str then only inserts strings.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace mishbench {

inline std::string num(int64_t v) { return std::to_string(v); }

// "(a, b, c)", as Python prints a shape.
inline std::string shape(c10::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  if (s.size() == 1) out += ",";
  return out + ")";
}

}  // namespace mishbench
