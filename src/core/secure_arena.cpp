// Locked memory for secrets: small ones in slots packed into shared locked pages (a slab per
// slot size), larger ones in pages of their own; everything wiped when it is freed.
#include "pgkm/core/secure_arena.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace pgkm::core
{

namespace
{

constexpr std::uint64_t kPageMagic = 0x616e6572612d6b70; // "pk-arena"
constexpr std::size_t kClasses = 4;                      // slots of 32, 64, 128 and 256 bytes
constexpr std::size_t kKeptEmptyPages = 1;               // per slot size
static_assert(kArenaMinSlot << (kClasses - 1) == kArenaMaxSlot);

// The start of every arena page. The slots it covers (with the bitmap that follows it, one
// bit per slot, set while the slot is in use) are never handed out. Only metadata lives here.
struct PageHeader
{
	std::uint64_t magic;
	PageHeader *prev; // in its slot size's list of pages with a free slot
	PageHeader *next;
	std::uint32_t slot_size;
	std::uint32_t first_slot; // the first slot after the header and bitmap
	std::uint32_t slots;      // slots in the page, those under the header included
	std::uint32_t used;       // slots handed out
	pid_t pid;                // the process that locked it: fork does not pass locks on
	bool locked;
	bool listed; // in its list (it has a free slot)
};

// The pages of one slot size that have a free slot: partly used ones first, empty ones last.
struct SizeClass
{
	PageHeader *head = nullptr;
	PageHeader *tail = nullptr;
	std::size_t empty = 0;
};

struct Arena
{
	std::mutex mutex;
	std::array<SizeClass, kClasses> classes;
	SecureMemoryStats stats;
};

// Returns the process's arena. Never destroyed, so that buffers freed during static
// destruction still find it.
Arena &TheArena() noexcept
{
	static Arena *arena = new Arena;
	return *arena;
}

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

// Maps bytes (a multiple of the page size) of zeroed memory, locks it if the system allows
// and excludes it from core dumps.
std::uint8_t *MapPages(std::size_t bytes, bool *locked)
{
	void *memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (memory == MAP_FAILED)
		throw Error(ErrorKind::Internal,
					"could not allocate " + std::to_string(bytes) + " bytes of secure memory");
	*locked = mlock(memory, bytes) == 0;
#ifdef MADV_DONTDUMP
	madvise(memory, bytes, MADV_DONTDUMP);
#endif
	return static_cast<std::uint8_t *>(memory);
}

// Wipes and unmaps pages made by MapPages.
void UnmapPages(std::uint8_t *memory, std::size_t bytes, bool locked) noexcept
{
	OPENSSL_cleanse(memory, bytes);
	if (locked)
		munlock(memory, bytes);
	munmap(memory, bytes);
}

// Returns the index of the slot size that holds size bytes (1..kArenaMaxSlot).
std::size_t ClassOf(std::size_t size) noexcept
{
	const int width = std::bit_width(size - 1);
	return width <= 5 ? 0 : static_cast<std::size_t>(width - 5);
}

// Returns a page's bitmap, which follows its header.
std::uint64_t *Bitmap(PageHeader *page) noexcept
{
	return reinterpret_cast<std::uint64_t *>(page + 1);
}

// Adds a page at the front (partly used) or the back (empty) of its class's list.
void Link(SizeClass &c, PageHeader *page, bool front) noexcept
{
	page->listed = true;
	if (c.head == nullptr)
	{
		page->prev = page->next = nullptr;
		c.head = c.tail = page;
	}
	else if (front)
	{
		page->prev = nullptr;
		page->next = c.head;
		c.head->prev = page;
		c.head = page;
	}
	else
	{
		page->next = nullptr;
		page->prev = c.tail;
		c.tail->next = page;
		c.tail = page;
	}
}

// Removes a page from its class's list.
void Unlink(SizeClass &c, PageHeader *page) noexcept
{
	(page->prev ? page->prev->next : c.head) = page->next;
	(page->next ? page->next->prev : c.tail) = page->prev;
	page->prev = page->next = nullptr;
	page->listed = false;
}

// Maps a new page for slots of slot_size bytes and initialises its header and bitmap: the
// slots under the header, and the bits past the last slot, are marked used for good.
PageHeader *NewPage(Arena &arena, std::size_t slot_size)
{
	const std::size_t page_size = PageSize();
	bool locked = false;
	std::uint8_t *memory = MapPages(page_size, &locked);
	auto *page = reinterpret_cast<PageHeader *>(memory);
	const std::size_t slots = page_size / slot_size;
	const std::size_t words = (slots + 63) / 64;
	const std::size_t header = sizeof(PageHeader) + words * sizeof(std::uint64_t);
	page->magic = kPageMagic;
	page->slot_size = static_cast<std::uint32_t>(slot_size);
	page->first_slot = static_cast<std::uint32_t>((header + slot_size - 1) / slot_size);
	page->slots = static_cast<std::uint32_t>(slots);
	page->used = 0;
	page->pid = getpid();
	page->locked = locked;
	std::uint64_t *bitmap = Bitmap(page);
	for (std::size_t i = 0; i < words * 64; ++i)
		if (i < page->first_slot || i >= slots)
			bitmap[i / 64] |= std::uint64_t{1} << (i % 64);
	arena.stats.arena_pages++;
	arena.stats.mapped_bytes += page_size;
	if (locked)
		arena.stats.locked_bytes += page_size;
	return page;
}

// Locks a page again in a process forked from the one that locked it (the child inherits
// the mapping and its exclusion from core dumps, but not the lock).
void RelockAfterFork(Arena &arena, PageHeader *page) noexcept
{
	const std::size_t page_size = PageSize();
	if (page->locked)
		arena.stats.locked_bytes -= page_size;
	page->locked = mlock(page, page_size) == 0;
	if (page->locked)
		arena.stats.locked_bytes += page_size;
	page->pid = getpid();
}

// Hands out a zeroed slot from the first page of the class that has one, mapping a page if
// none has.
SecureBlock AllocateSlot(std::size_t size)
{
	Arena &arena = TheArena();
	const std::size_t index = ClassOf(size);
	const std::size_t slot_size = kArenaMinSlot << index;
	std::lock_guard<std::mutex> guard(arena.mutex);
	SizeClass &c = arena.classes[index];
	PageHeader *page = c.head;
	if (page == nullptr)
	{
		page = NewPage(arena, slot_size);
		Link(c, page, true);
	}
	else
	{
		if (page->pid != getpid())
			RelockAfterFork(arena, page);
		if (page->used == 0)
		{
			c.empty--;
			arena.stats.empty_pages--;
		}
	}
	std::uint64_t *bitmap = Bitmap(page);
	std::size_t slot = 0;
	for (std::size_t w = 0;; ++w)
	{
		if (~bitmap[w] != 0)
		{
			const int bit = std::countr_zero(~bitmap[w]);
			bitmap[w] |= std::uint64_t{1} << bit;
			slot = w * 64 + static_cast<std::size_t>(bit);
			break;
		}
	}
	page->used++;
	arena.stats.slots_in_use++;
	if (page->used == page->slots - page->first_slot)
		Unlink(c, page);
	std::uint8_t *data = reinterpret_cast<std::uint8_t *>(page) + slot * slot_size;
	std::fill_n(data, slot_size, std::uint8_t{0});
	return SecureBlock{data, slot_size, page->locked};
}

// Wipes a slot and returns it to its page; an empty page is kept for reuse (one per slot
// size) or unmapped.
void FreeSlot(std::uint8_t *data, std::size_t capacity) noexcept
{
	Arena &arena = TheArena();
	const std::size_t page_size = PageSize();
	auto *page = reinterpret_cast<PageHeader *>(reinterpret_cast<std::uintptr_t>(data) &
												~(std::uintptr_t{page_size} - 1));
	const std::size_t offset =
		static_cast<std::size_t>(data - reinterpret_cast<std::uint8_t *>(page));
	std::lock_guard<std::mutex> guard(arena.mutex);
	if (page->magic != kPageMagic || page->slot_size != capacity || offset % capacity != 0)
		std::abort();
	const std::size_t slot = offset / capacity;
	std::uint64_t *bitmap = Bitmap(page);
	const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
	if (slot < page->first_slot || slot >= page->slots || (bitmap[slot / 64] & bit) == 0)
		std::abort();
	OPENSSL_cleanse(data, capacity);
	bitmap[slot / 64] &= ~bit;
	page->used--;
	arena.stats.slots_in_use--;
	SizeClass &c = arena.classes[ClassOf(capacity)];
	if (!page->listed)
		Link(c, page, true);
	if (page->used > 0)
		return;
	Unlink(c, page);
	if (c.empty < kKeptEmptyPages)
	{
		Link(c, page, false);
		c.empty++;
		arena.stats.empty_pages++;
		return;
	}
	arena.stats.arena_pages--;
	arena.stats.mapped_bytes -= page_size;
	if (page->locked)
		arena.stats.locked_bytes -= page_size;
	const bool locked = page->locked;
	UnmapPages(reinterpret_cast<std::uint8_t *>(page), page_size, locked);
}

} // namespace

SecureBlock SecureAllocate(std::size_t size)
{
	if (size == 0)
		throw Error(ErrorKind::InvalidArgument, "secure memory of 0 bytes requested");
	if (size <= kArenaMaxSlot)
		return AllocateSlot(size);
	const std::size_t page = PageSize();
	if (size > SIZE_MAX - (page - 1))
		throw Error(ErrorKind::Internal,
					"secure buffer of " + std::to_string(size) + " bytes is too large");
	const std::size_t capacity = (size + page - 1) / page * page;
	SecureBlock block;
	block.data = MapPages(capacity, &block.locked);
	block.capacity = capacity;
	Arena &arena = TheArena();
	std::lock_guard<std::mutex> guard(arena.mutex);
	arena.stats.large_buffers++;
	arena.stats.mapped_bytes += capacity;
	if (block.locked)
		arena.stats.locked_bytes += capacity;
	return block;
}

void SecureFree(const SecureBlock &block) noexcept
{
	if (block.data == nullptr)
		return;
	if (block.capacity <= kArenaMaxSlot)
	{
		FreeSlot(block.data, block.capacity);
		return;
	}
	const std::size_t page = PageSize();
	if (reinterpret_cast<std::uintptr_t>(block.data) % page != 0 || block.capacity % page != 0)
		std::abort();
	Arena &arena = TheArena();
	{
		std::lock_guard<std::mutex> guard(arena.mutex);
		arena.stats.large_buffers--;
		arena.stats.mapped_bytes -= block.capacity;
		if (block.locked)
			arena.stats.locked_bytes -= block.capacity;
	}
	UnmapPages(block.data, block.capacity, block.locked);
}

SecureMemoryStats SecureMemoryStatsNow() noexcept
{
	Arena &arena = TheArena();
	std::lock_guard<std::mutex> guard(arena.mutex);
	return arena.stats;
}

std::size_t SecurePageSize() noexcept
{
	return PageSize();
}

} // namespace pgkm::core
