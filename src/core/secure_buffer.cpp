// A move-only buffer for key material: page-aligned, locked, kept out of core dumps, wiped.
#include "pgkm/core/secure_buffer.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace pgkm::core
{

namespace
{

// Returns the system page size, falling back to 4 KiB if it cannot be read.
std::size_t PageSize() noexcept
{
	static const std::size_t page = []
	{
		const long value = sysconf(_SC_PAGESIZE);
		return value > 0 ? static_cast<std::size_t>(value) : std::size_t{4096};
	}();
	return page;
}

} // namespace

// Allocates whole pages for size zeroed bytes, then locks them and hides them from core dumps.
SecureBuffer::SecureBuffer(std::size_t size)
{
	if (size == 0)
		return;

	const std::size_t page = PageSize();
	if (size > SIZE_MAX - (page - 1))
		throw Error(ErrorKind::Internal,
					"secure buffer of " + std::to_string(size) + " bytes is too large");
	const std::size_t capacity = (size + page - 1) / page * page;

	void *memory = nullptr;
	if (posix_memalign(&memory, page, capacity) != 0 || memory == nullptr)
		throw Error(ErrorKind::Internal,
					"could not allocate " + std::to_string(size) + " bytes of secure memory");

	data_ = static_cast<std::uint8_t *>(memory);
	size_ = size;
	capacity_ = capacity;
	std::fill_n(data_, capacity_, std::uint8_t{0});
	locked_ = mlock(data_, capacity_) == 0;
#ifdef MADV_DONTDUMP
	madvise(data_, capacity_, MADV_DONTDUMP);
#endif
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

// Wipes every allocated byte, gives the pages back to ordinary use and frees them.
void SecureBuffer::Release() noexcept
{
	if (data_ == nullptr)
		return;
	OPENSSL_cleanse(data_, capacity_);
#ifdef MADV_DODUMP
	madvise(data_, capacity_, MADV_DODUMP);
#endif
	if (locked_)
		munlock(data_, capacity_);
	std::free(data_);
	data_ = nullptr;
	size_ = 0;
	capacity_ = 0;
	locked_ = false;
}

} // namespace pgkm::core
