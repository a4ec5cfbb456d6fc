// A move-only buffer for key material: locked in memory where the system allows, excluded
// from core dumps, and wiped with OPENSSL_cleanse on release. Small buffers share locked
// pages (secure_arena.hpp) and are aligned to at least 32 bytes; larger ones are page-aligned.
#pragma once

#include "pgkm/core/pure.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

namespace pgkm::core
{

class SecureBuffer
{
  public:
	SecureBuffer() noexcept = default;
	// Allocates size zeroed bytes; throws Error(Internal) when memory cannot be had.
	explicit SecureBuffer(std::size_t size);
	// Copies bytes into a new secure buffer.
	static SecureBuffer CopyOf(std::span<const std::uint8_t> bytes);
	// Fills a new buffer of size bytes from OpenSSL's CSPRNG.
	static SecureBuffer Random(std::size_t size);
	~SecureBuffer();

	SecureBuffer(SecureBuffer &&other) noexcept;
	SecureBuffer &operator=(SecureBuffer &&other) noexcept;
	SecureBuffer(const SecureBuffer &) = delete;
	SecureBuffer &operator=(const SecureBuffer &) = delete;

	std::uint8_t *data() noexcept { return data_; }
	const std::uint8_t *data() const noexcept { return data_; }
	std::size_t size() const noexcept { return size_; }
	bool empty() const noexcept { return size_ == 0; }
	std::span<const std::uint8_t> view() const noexcept { return {data_, size_}; }
	std::span<std::uint8_t> span() noexcept { return {data_, size_}; }
	// Whether mlock succeeded (informational; failure to lock is not an error).
	bool locked() const noexcept { return locked_; }

  private:
	void Release() noexcept;

	std::uint8_t *data_ = nullptr;
	std::size_t size_ = 0;
	std::size_t capacity_ = 0;
	bool locked_ = false;
};

} // namespace pgkm::core
