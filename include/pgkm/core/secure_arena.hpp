// Locked memory for secrets. Small secrets (working keys, DEKs, PINs: up to kArenaMaxSlot
// bytes) share pages: slots of a few fixed sizes packed into pages that are mmap'd, mlock'd
// and excluded from core dumps, so a thousand cached keys cost a few locked pages rather than
// a thousand. Larger buffers get pages of their own, likewise locked. Every slot and page is
// wiped when it is freed. SecureBuffer is the only user; this header exists for its tests.
#pragma once

#include "pgkm/core/pure.hpp"

#include <cstddef>
#include <cstdint>

namespace pgkm::core
{

// The slot sizes: powers of two from kArenaMinSlot to kArenaMaxSlot bytes. A slot is aligned
// to its size; a larger buffer to a page.
inline constexpr std::size_t kArenaMinSlot = 32;
inline constexpr std::size_t kArenaMaxSlot = 256;

// One allocation of secure memory.
struct SecureBlock
{
	std::uint8_t *data = nullptr;
	std::size_t capacity = 0; // the slot's size, or the pages' total
	bool locked = false;      // whether mlock succeeded for its page(s)
};

// Returns size zeroed bytes (size > 0) of locked, undumped memory: a slot in a shared page
// for up to kArenaMaxSlot bytes, whole pages otherwise. A page that cannot be locked
// (RLIMIT_MEMLOCK) is used unlocked. Throws Error(Internal) when no memory can be mapped.
SecureBlock SecureAllocate(std::size_t size);

// Wipes a block (as SecureAllocate returned it) with OPENSSL_cleanse and gives it back: a slot
// returns to its page, whose last free slot unmaps it unless it is the one empty page kept per slot
// size for reuse; whole pages are unmapped. Aborts on a block this allocator did not hand out.
void SecureFree(const SecureBlock &block) noexcept;

// What the process holds in secure memory.
struct SecureMemoryStats
{
	std::size_t arena_pages = 0;   // pages holding slots, the kept empty ones included
	std::size_t empty_pages = 0;   // of which empty, kept for reuse
	std::size_t slots_in_use = 0;  // small buffers alive
	std::size_t large_buffers = 0; // buffers with pages of their own
	std::size_t mapped_bytes = 0;  // arena pages and large buffers
	std::size_t locked_bytes = 0;  // of which mlock'd
};

// Returns the current figures (for pgkm.key_cache_stats() and the tests).
SecureMemoryStats SecureMemoryStatsNow() noexcept;

// Returns the page size the allocator uses.
std::size_t SecurePageSize() noexcept;

} // namespace pgkm::core
