// Random GCM nonces drawn from a buffer refilled in bulk from OpenSSL's CSPRNG.
#include "pgkm/core/nonce_pool.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <pthread.h>
#include <unistd.h>

namespace pgkm::core
{

namespace
{

// The process id as last seen; getpid() costs a system call (about 120 ns here), so the
// value is cached and refreshed in every child of fork() by an atfork handler.
std::atomic<pid_t> cached_pid{0};

// Records the child's own process id right after fork().
void RefreshPidInChild()
{
	cached_pid.store(getpid(), std::memory_order_relaxed);
}

// Returns the current process id without a system call on the hot path.
pid_t CurrentPid()
{
	static std::once_flag registered;
	std::call_once(registered,
				   []
				   {
					   pthread_atfork(nullptr, nullptr, RefreshPidInChild);
					   cached_pid.store(getpid(), std::memory_order_relaxed);
				   });
	return cached_pid.load(std::memory_order_relaxed);
}

} // namespace

// Wipes the unused nonces.
NoncePool::~NoncePool()
{
	OPENSSL_cleanse(pool_.data(), pool_.size());
}

// Hands out the next unused 12 bytes, refilling first if the pool is spent or was
// inherited from a parent process; the bytes handed out are wiped from the pool.
void NoncePool::Next(std::span<std::uint8_t, kGcmNonceSize> out)
{
	if (used_ + kGcmNonceSize > kPoolBytes || owner_ != CurrentPid())
		Refill();
	std::uint8_t *next = pool_.data() + used_;
	std::memcpy(out.data(), next, kGcmNonceSize);
	OPENSSL_cleanse(next, kGcmNonceSize);
	used_ += kGcmNonceSize;
}

// Discards what is left and draws a whole new pool for this process.
void NoncePool::Refill()
{
	OPENSSL_cleanse(pool_.data(), pool_.size());
	used_ = kPoolBytes;
	if (RAND_bytes(pool_.data(), static_cast<int>(pool_.size())) != 1)
	{
		OPENSSL_cleanse(pool_.data(), pool_.size());
		throw Error(ErrorKind::Internal, "the random number generator failed",
					"OpenSSL's RAND_bytes returned an error while drawing nonces.");
	}
	owner_ = CurrentPid();
	used_ = 0;
}

} // namespace pgkm::core
