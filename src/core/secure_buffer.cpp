// A move-only buffer for key material: locked, kept out of core dumps, wiped. The memory
// comes from the secure arena (secure_arena.cpp).
#include "pgkm/core/secure_buffer.hpp"

#include "pgkm/core/error.hpp"
#include "pgkm/core/secure_arena.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstring>

namespace pgkm::core
{

// Takes size zeroed bytes of locked, undumped memory from the arena.
SecureBuffer::SecureBuffer(std::size_t size)
{
	if (size == 0)
		return;
	const SecureBlock block = SecureAllocate(size);
	data_ = block.data;
	size_ = size;
	capacity_ = block.capacity;
	locked_ = block.locked;
}

// Copies bytes into a new secure buffer.
SecureBuffer SecureBuffer::CopyOf(std::span<const std::uint8_t> bytes)
{
	SecureBuffer buffer(bytes.size());
	if (!bytes.empty())
		std::memcpy(buffer.data_, bytes.data(), bytes.size());
	return buffer;
}

// Fills a new buffer from OpenSSL's CSPRNG.
SecureBuffer SecureBuffer::Random(std::size_t size)
{
	SecureBuffer buffer(size);
	std::size_t done = 0;
	while (done < size)
	{
		const std::size_t chunk = std::min<std::size_t>(size - done, INT_MAX);
		if (RAND_bytes(buffer.data_ + done, static_cast<int>(chunk)) != 1)
			throw Error(ErrorKind::Internal, "the random number generator failed",
						"OpenSSL's RAND_bytes returned an error.");
		done += chunk;
	}
	return buffer;
}

// Wipes and frees the buffer.
SecureBuffer::~SecureBuffer()
{
	Release();
}

// Takes the other buffer's memory and leaves it empty.
SecureBuffer::SecureBuffer(SecureBuffer &&other) noexcept
	: data_(other.data_), size_(other.size_), capacity_(other.capacity_), locked_(other.locked_)
{
	other.data_ = nullptr;
	other.size_ = 0;
	other.capacity_ = 0;
	other.locked_ = false;
}

// Wipes this buffer, then takes the other buffer's memory and leaves it empty.
SecureBuffer &SecureBuffer::operator=(SecureBuffer &&other) noexcept
{
	if (this != &other)
	{
		Release();
		data_ = other.data_;
		size_ = other.size_;
		capacity_ = other.capacity_;
		locked_ = other.locked_;
		other.data_ = nullptr;
		other.size_ = 0;
		other.capacity_ = 0;
		other.locked_ = false;
	}
	return *this;
}

// Gives the memory back to the arena, which wipes every byte of it.
void SecureBuffer::Release() noexcept
{
	if (data_ == nullptr)
		return;
	SecureFree(SecureBlock{data_, capacity_, locked_});
	data_ = nullptr;
	size_ = 0;
	capacity_ = 0;
	locked_ = false;
}

} // namespace pgkm::core
