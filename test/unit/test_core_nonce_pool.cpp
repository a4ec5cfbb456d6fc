// Unit tests of NoncePool: uniqueness, and no nonce shared between a parent and a forked child.
#include "pgkm/core/nonce_pool.hpp"

#include <gtest/gtest.h>

#include <array>
#include <set>
#include <sys/wait.h>
#include <unistd.h>

namespace pgkm::core
{
namespace
{

using Nonce = std::array<std::uint8_t, kGcmNonceSize>;

// 100,000 nonces, spanning hundreds of refills, are all distinct.
TEST(CoreNoncePool, HundredThousandDistinct)
{
	NoncePool pool;
	std::set<Nonce> seen;
	for (int i = 0; i < 100000; i++)
	{
		Nonce nonce{};
		pool.Next(nonce);
		ASSERT_TRUE(seen.insert(nonce).second) << "repeated nonce after " << i;
	}
}

// Two pools in one process draw different nonces.
TEST(CoreNoncePool, PoolsAreIndependent)
{
	NoncePool a, b;
	Nonce x{}, y{};
	a.Next(x);
	b.Next(y);
	EXPECT_NE(x, y);
}

// A child of fork() does not reuse the nonces its parent had drawn but not yet handed out.
TEST(CoreNoncePool, ForkedChildDrawsFreshNonces)
{
	NoncePool pool;
	Nonce first{};
	pool.Next(first);

	int fds[2];
	ASSERT_EQ(pipe(fds), 0);
	const pid_t child = fork();
	ASSERT_GE(child, 0);
	if (child == 0)
	{
		close(fds[0]);
		Nonce nonce{};
		pool.Next(nonce);
		const bool ok =
			write(fds[1], nonce.data(), nonce.size()) == static_cast<ssize_t>(nonce.size());
		close(fds[1]);
		_exit(ok ? 0 : 1);
	}
	close(fds[1]);

	Nonce child_nonce{};
	std::size_t got = 0;
	while (got < child_nonce.size())
	{
		const ssize_t n = read(fds[0], child_nonce.data() + got, child_nonce.size() - got);
		if (n <= 0)
			break;
		got += static_cast<std::size_t>(n);
	}
	close(fds[0]);
	int status = 0;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(got, child_nonce.size());

	Nonce parent_next{};
	pool.Next(parent_next);
	EXPECT_NE(child_nonce, parent_next);
	EXPECT_NE(child_nonce, first);

	for (std::size_t i = 0; i < NoncePool::kPoolBytes / kGcmNonceSize; i++)
	{
		Nonce later{};
		pool.Next(later);
		EXPECT_NE(child_nonce, later) << "parent nonce " << i;
	}
}

} // namespace
} // namespace pgkm::core
