// Unit tests of the secure arena behind SecureBuffer: small buffers packed into shared locked
// pages, wiped on free, slots reused, many allocations, alignment, large buffers.
#include "pgkm/core/secure_arena.hpp"
#include "pgkm/core/secure_buffer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <iostream>
#include <memory>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace pgkm::core
{
namespace
{

// ASan intercepts mlock and makes it a no-op that succeeds: under it, locked() says true of
// memory the kernel never locked, so the "lo" flag is compared only without it.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kMlockIntercepted = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kMlockIntercepted = true;
#else
constexpr bool kMlockIntercepted = false;
#endif
#else
constexpr bool kMlockIntercepted = false;
#endif

// Returns the start of the page that holds p.
std::uintptr_t PageOf(const void *p)
{
	return reinterpret_cast<std::uintptr_t>(p) & ~(std::uintptr_t{SecurePageSize()} - 1);
}

// Returns the VmFlags line of the mapping of this process that holds p, or "".
std::string VmFlagsOf(const void *p)
{
	std::ifstream in("/proc/self/smaps");
	const auto address = reinterpret_cast<std::uintptr_t>(p);
	std::string line;
	bool inside = false;
	while (std::getline(in, line))
	{
		std::uintptr_t start = 0, end = 0;
		char dash = 0;
		std::istringstream range(line);
		if (range >> std::hex >> start >> dash >> end && dash == '-' &&
			line.find(' ') != std::string::npos && line.find(':') > line.find(' '))
		{
			inside = address >= start && address < end;
			continue;
		}
		if (inside && line.rfind("VmFlags:", 0) == 0)
			return line;
	}
	return "";
}

// Whether a VmFlags line has a two-letter flag.
bool HasFlag(const std::string &flags, const char *flag)
{
	return (flags + " ").find(std::string(" ") + flag + " ") != std::string::npos;
}

// Small buffers share pages: 100 working keys of 32 bytes take one or two pages, not 100,
// and keys of another size go to pages of their own.
TEST(CoreSecureArena, SmallBuffersArePackedIntoSharedPages)
{
	const SecureMemoryStats before = SecureMemoryStatsNow();
	std::vector<SecureBuffer> keys;
	for (int i = 0; i < 100; ++i)
		keys.push_back(SecureBuffer::Random(32));
	std::set<std::uintptr_t> pages;
	std::set<const std::uint8_t *> addresses;
	for (const SecureBuffer &k : keys)
	{
		pages.insert(PageOf(k.data()));
		addresses.insert(k.data());
	}
	EXPECT_EQ(addresses.size(), keys.size());
	EXPECT_LE(pages.size(), 2u) << "100 keys of 32 bytes should fill one or two pages";
	const SecureMemoryStats during = SecureMemoryStatsNow();
	EXPECT_EQ(during.slots_in_use - before.slots_in_use, 100u);
	EXPECT_LE(during.arena_pages, before.arena_pages + 2);

	SecureBuffer wide(64);
	EXPECT_EQ(pages.count(PageOf(wide.data())), 0u) << "a 64-byte slot in a 32-byte page";
}

// Each buffer is aligned to its slot (at least 32 bytes), a large one to a page; all are
// zeroed, writable to their last byte, and in memory flagged locked and undumped.
TEST(CoreSecureArena, AlignmentZeroingAndMappingFlags)
{
	for (std::size_t size : {1, 16, 31, 32, 33, 64, 65, 100, 128, 200, 256})
	{
		SCOPED_TRACE(size);
		SecureBuffer buffer(size);
		std::size_t slot = kArenaMinSlot;
		while (slot < size)
			slot *= 2;
		EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer.data()) % slot, 0u);
		EXPECT_TRUE(std::all_of(buffer.data(), buffer.data() + size,
								[](std::uint8_t b) { return b == 0; }));
		std::fill_n(buffer.data(), size, std::uint8_t{0x5a});
		const std::string flags = VmFlagsOf(buffer.data());
		ASSERT_FALSE(flags.empty()) << "no mapping holds the buffer";
		EXPECT_TRUE(HasFlag(flags, "dd")) << flags;
		if (!kMlockIntercepted)
		{
			EXPECT_EQ(HasFlag(flags, "lo"), buffer.locked()) << flags;
		}
	}
	for (std::size_t size : {257, 4095, 4096, 4097, 100000})
	{
		SCOPED_TRACE(size);
		SecureBuffer buffer(size);
		EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer.data()) % SecurePageSize(), 0u);
		EXPECT_TRUE(std::all_of(buffer.data(), buffer.data() + size,
								[](std::uint8_t b) { return b == 0; }));
		std::fill_n(buffer.data(), size, std::uint8_t{0x5a});
		const std::string flags = VmFlagsOf(buffer.data());
		EXPECT_TRUE(HasFlag(flags, "dd")) << flags;
		if (!kMlockIntercepted)
		{
			EXPECT_EQ(HasFlag(flags, "lo"), buffer.locked()) << flags;
		}
	}
}

// A freed slot is wiped at once, while its page stays mapped for its neighbours, which keep
// their contents.
TEST(CoreSecureArena, FreedSlotIsWipedAndNeighboursKept)
{
	SecureBuffer neighbour = SecureBuffer::CopyOf(std::vector<std::uint8_t>(32, 0x11));
	auto secret = std::make_unique<SecureBuffer>(32);
	std::fill_n(secret->data(), 32, std::uint8_t{0xa5});
	ASSERT_EQ(PageOf(secret->data()), PageOf(neighbour.data())) << "not in one page";
	const volatile std::uint8_t *freed = secret->data();
	int before = 0;
	for (int i = 0; i < 32; ++i)
		before += freed[i] == 0xa5;
	ASSERT_EQ(before, 32) << "the probe does not see the secret";
	secret.reset();
	int left = 0;
	for (int i = 0; i < 32; ++i)
		left += freed[i] != 0;
	EXPECT_EQ(left, 0) << "a freed slot was not wiped";
	EXPECT_TRUE(std::all_of(neighbour.data(), neighbour.data() + 32,
							[](std::uint8_t b) { return b == 0x11; }));
}

// A freed slot is handed out again, zeroed, and allocating and freeing in a loop maps no
// new pages.
TEST(CoreSecureArena, FreedSlotsAreReused)
{
	SecureBuffer keep(32);
	const std::uint8_t *first = nullptr;
	{
		SecureBuffer a = SecureBuffer::Random(32);
		first = a.data();
	}
	SecureBuffer b(32);
	EXPECT_EQ(b.data(), first);
	EXPECT_TRUE(std::all_of(b.data(), b.data() + 32, [](std::uint8_t x) { return x == 0; }));

	const SecureMemoryStats before = SecureMemoryStatsNow();
	for (int i = 0; i < 10000; ++i)
	{
		SecureBuffer dek = SecureBuffer::Random(32);
		SecureBuffer derived(64);
	}
	const SecureMemoryStats after = SecureMemoryStatsNow();
	EXPECT_EQ(after.slots_in_use, before.slots_in_use);
	EXPECT_LE(after.arena_pages, before.arena_pages + 1);
}

// 10,000 cached working keys: distinct slots that do not overlap, about 4 KiB of locked
// memory per 126 keys; freeing them all unmaps every page but the one kept empty.
TEST(CoreSecureArena, TenThousandKeys)
{
	const SecureMemoryStats before = SecureMemoryStatsNow();
	const std::size_t count = 10000;
	std::vector<SecureBuffer> keys;
	keys.reserve(count);
	for (std::size_t i = 0; i < count; ++i)
	{
		keys.emplace_back(32);
		std::fill_n(keys.back().data(), 32, static_cast<std::uint8_t>(i * 7 + 1));
	}
	std::set<const std::uint8_t *> addresses;
	for (std::size_t i = 0; i < count; ++i)
	{
		addresses.insert(keys[i].data());
		const std::uint8_t expected = static_cast<std::uint8_t>(i * 7 + 1);
		ASSERT_TRUE(std::all_of(keys[i].data(), keys[i].data() + 32,
								[&](std::uint8_t b) { return b == expected; }))
			<< "key " << i << " was overwritten by a neighbour";
	}
	EXPECT_EQ(addresses.size(), count);
	const SecureMemoryStats full = SecureMemoryStatsNow();
	const std::size_t per_page = SecurePageSize() / 32 - 2; // header and bitmap: two slots
	const std::size_t pages = (count + per_page - 1) / per_page;
	EXPECT_LE(full.arena_pages - before.arena_pages, pages);
	EXPECT_GE(full.arena_pages - before.arena_pages + 1, pages);
	if (keys.front().locked())
	{
		EXPECT_GE(full.locked_bytes - before.locked_bytes, (pages - 1) * SecurePageSize());
	}
	EXPECT_LE(full.locked_bytes - before.locked_bytes, pages * SecurePageSize());
	std::cout << "[ info     ] 10,000 keys of 32 bytes: " << full.arena_pages - before.arena_pages
			  << " arena pages, " << full.locked_bytes - before.locked_bytes << " bytes locked\n";

	keys.clear();
	const SecureMemoryStats after = SecureMemoryStatsNow();
	EXPECT_EQ(after.slots_in_use, before.slots_in_use);
	EXPECT_LE(after.arena_pages, before.arena_pages + 1);
	EXPECT_LE(after.empty_pages, std::size_t(std::bit_width(kArenaMaxSlot / kArenaMinSlot)))
		<< "more than one empty page kept per slot size";
}

// Large buffers get pages of their own, counted apart and unmapped when freed.
TEST(CoreSecureArena, LargeBuffersHavePagesOfTheirOwn)
{
	const SecureMemoryStats before = SecureMemoryStatsNow();
	{
		SecureBuffer a(257);
		SecureBuffer b(3 * SecurePageSize() + 1);
		EXPECT_NE(PageOf(a.data()), PageOf(b.data()));
		std::fill_n(b.data(), b.size(), std::uint8_t{0x77});
		const SecureMemoryStats during = SecureMemoryStatsNow();
		EXPECT_EQ(during.large_buffers, before.large_buffers + 2);
		EXPECT_EQ(during.mapped_bytes, before.mapped_bytes + 5 * SecurePageSize());
		EXPECT_EQ(during.arena_pages, before.arena_pages);
	}
	const SecureMemoryStats after = SecureMemoryStatsNow();
	EXPECT_EQ(after.large_buffers, before.large_buffers);
	EXPECT_EQ(after.mapped_bytes, before.mapped_bytes);
}

// Freeing memory the arena did not hand out, or a slot twice, stops the process rather than
// corrupting the arena.
TEST(CoreSecureArenaDeathTest, ForeignOrDoubleFreeAborts)
{
	GTEST_FLAG_SET(death_test_style, "threadsafe");
	EXPECT_DEATH(
		{
			void *heap = std::malloc(64);
			SecureFree(SecureBlock{static_cast<std::uint8_t *>(heap), 32, false});
		},
		"");
	EXPECT_DEATH(
		{
			SecureBlock block = SecureAllocate(32);
			SecureFree(block);
			SecureFree(block);
		},
		"");
}

} // namespace
} // namespace pgkm::core
