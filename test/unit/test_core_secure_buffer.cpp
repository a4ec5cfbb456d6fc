// Unit tests of SecureBuffer: ownership, contents and allocation properties.
#include "pgkm/core/secure_buffer.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <cstdint>
#include <type_traits>
#include <unistd.h>
#include <utility>

namespace pgkm::core
{
namespace
{

using test::Bytes;

static_assert(!std::is_copy_constructible_v<SecureBuffer>);
static_assert(!std::is_copy_assignable_v<SecureBuffer>);
static_assert(std::is_nothrow_move_constructible_v<SecureBuffer>);
static_assert(std::is_nothrow_move_assignable_v<SecureBuffer>);

// A default or zero-sized buffer is empty and owns nothing.
TEST(CoreSecureBuffer, EmptyBuffers)
{
	SecureBuffer none;
	EXPECT_TRUE(none.empty());
	EXPECT_EQ(none.size(), 0u);
	EXPECT_EQ(none.data(), nullptr);
	EXPECT_TRUE(none.view().empty());

	SecureBuffer zero(0);
	EXPECT_TRUE(zero.empty());
	EXPECT_TRUE(SecureBuffer::CopyOf({}).empty());
	EXPECT_TRUE(SecureBuffer::Random(0).empty());
}

// A new buffer has the requested size and is zeroed; a small one starts on a 32-byte
// boundary (a slot of the secure arena), a larger one on a page boundary.
TEST(CoreSecureBuffer, SizeZeroedAndAligned)
{
	for (std::size_t size : {1, 32, 64, 256, 257, 4095, 4096, 4097, 100000})
	{
		SecureBuffer buffer(size);
		EXPECT_FALSE(buffer.empty());
		EXPECT_EQ(buffer.size(), size);
		EXPECT_EQ(buffer.span().size(), size);
		EXPECT_TRUE(std::all_of(buffer.data(), buffer.data() + size,
								[](std::uint8_t b) { return b == 0; }));
		const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
		const std::uintptr_t alignment = size <= 256 ? 32 : page;
		EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buffer.data()) % alignment, 0u) << size;
	}
	SecureBuffer small(32);
	std::cout << "[ info     ] mlock " << (small.locked() ? "succeeded" : "was refused") << "\n";
}

// CopyOf holds the same bytes in its own memory.
TEST(CoreSecureBuffer, CopyOfCopies)
{
	Bytes source = {1, 2, 3, 4, 5};
	SecureBuffer copy = SecureBuffer::CopyOf(source);
	ASSERT_EQ(copy.size(), source.size());
	EXPECT_TRUE(std::equal(source.begin(), source.end(), copy.data()));
	source[0] = 99;
	EXPECT_EQ(copy.data()[0], 1);
	copy.span()[1] = 42;
	EXPECT_EQ(source[1], 2);
}

// Random buffers differ from each other and are not all zero.
TEST(CoreSecureBuffer, RandomBuffersDiffer)
{
	SecureBuffer a = SecureBuffer::Random(32);
	SecureBuffer b = SecureBuffer::Random(32);
	ASSERT_EQ(a.size(), 32u);
	ASSERT_EQ(b.size(), 32u);
	EXPECT_FALSE(std::equal(a.data(), a.data() + 32, b.data()));
	EXPECT_FALSE(std::all_of(a.data(), a.data() + 32, [](std::uint8_t x) { return x == 0; }));
}

// Moving hands over the memory and leaves the source empty.
TEST(CoreSecureBuffer, MoveConstructionLeavesSourceEmpty)
{
	SecureBuffer source = SecureBuffer::CopyOf(Bytes{9, 8, 7});
	const std::uint8_t *memory = source.data();
	const bool locked = source.locked();

	SecureBuffer target(std::move(source));
	EXPECT_EQ(target.data(), memory);
	EXPECT_EQ(target.size(), 3u);
	EXPECT_EQ(target.locked(), locked);
	EXPECT_EQ(target.data()[2], 7);
	EXPECT_TRUE(source.empty());
	EXPECT_EQ(source.data(), nullptr);
	EXPECT_FALSE(source.locked());
}

// Move assignment releases the target's old memory, takes the source's and empties it.
TEST(CoreSecureBuffer, MoveAssignmentLeavesSourceEmpty)
{
	SecureBuffer source = SecureBuffer::CopyOf(Bytes{1, 2});
	SecureBuffer target = SecureBuffer::CopyOf(Bytes{3, 4, 5, 6});
	const std::uint8_t *memory = source.data();

	target = std::move(source);
	EXPECT_EQ(target.data(), memory);
	EXPECT_EQ(target.size(), 2u);
	EXPECT_EQ(target.data()[1], 2);
	EXPECT_TRUE(source.empty());
	EXPECT_EQ(source.data(), nullptr);

	SecureBuffer &alias = target;
	target = std::move(alias);
	EXPECT_EQ(target.size(), 2u);
	EXPECT_EQ(target.data()[0], 1);

	target = SecureBuffer();
	EXPECT_TRUE(target.empty());
}

} // namespace
} // namespace pgkm::core
