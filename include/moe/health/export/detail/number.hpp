// Shortest text that reads back as the same double, shared by the text exporters.
#pragma once

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>

namespace moe::detail {

/// Shortest round-trip decimal of a finite value (std::to_chars); "nan", "inf", "-inf" otherwise.
inline std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, v);
  return std::string(buffer, result.ptr);
}

}  // namespace moe::detail
