// Writes arrays in NumPy's .npy format (version 1.0), so that the Python tests can compare the
// module's results with the library's, bit for bit.
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <Eigen/Core>

namespace moe::golden {

template <class T>
constexpr const char* npy_descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  if constexpr (std::is_same_v<T, double>) return "<f8";
  if constexpr (std::is_same_v<T, std::int32_t>) return "<i4";
  if constexpr (std::is_same_v<T, std::int64_t> || std::is_same_v<T, long>) return "<i8";
  if constexpr (std::is_same_v<T, bool>) return "|b1";
}

/// Writes `data` ([rows, cols] row-major, or [rows] when cols < 0) to `path`.
template <class T>
void write_npy(const std::string& path, const T* data, Eigen::Index rows, Eigen::Index cols = -1) {
  const std::string shape = cols < 0
                                ? "(" + std::to_string(rows) + ",)"
                                : "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  std::string header = "{'descr': '" + std::string(npy_descr<T>()) +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header + '\n', padded with spaces to a multiple of 64.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  const auto length = static_cast<std::uint16_t>(header.size());
  const char length_bytes[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
  out.write(length_bytes, 2);
  out << header;
  const Eigen::Index count = rows * (cols < 0 ? 1 : cols);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(T)));
}

/// A dense Eigen matrix or vector, written in row-major order whatever its storage.
template <class Derived>
void write_npy(const std::string& path, const Eigen::DenseBase<Derived>& m) {
  using T = typename Derived::Scalar;
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = m;
  if (Derived::ColsAtCompileTime == 1)
    write_npy(path, row_major.data(), row_major.rows());
  else
    write_npy(path, row_major.data(), row_major.rows(), row_major.cols());
}

}  // namespace moe::golden
