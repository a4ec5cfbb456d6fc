// The key cache's storage, for key_cache.cpp only: cached key names (by name and by id) and
// key versions (by id and version) in hash tables of the cache's memory context, their
// recency lists, the bound pgkm.key_cache_size with least-recently-used eviction, and the
// figures of pgkm.key_cache_stats() (KeyCacheReadStats is defined with them).
#pragma once

#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/key_cache.hpp"

namespace pgkm::pg
{

// One cached key name: its id, active version, algorithm and the versions lookups try.
struct KeyEntry
{
	char name[NAMEDATALEN]; // hash key
	std::uint32_t key_id;
	std::uint32_t active_version; // 0: no active version
	core::Algorithm algorithm;
	int lookup_count; // versions that lookups try: active first, then decrypt-only, newest first
	std::uint32_t lookup_versions[kMaxLookupVersions];
	dlist_node lru; // in the keys' recency list, most recently used first
};

extern std::uint64_t cache_epoch;         // bumped at every reset; call sites compare with it
extern dlist_head cache_versions_lru;     // most recently used first
extern dlist_head cache_versions_xact;    // used by this transaction (in_xact)
extern VersionEntry *cache_last_returned; // by the previous KeyFor* call: never evicted
extern int cache_version_count;
extern int cache_key_count;
extern std::uint64_t cache_hits;
extern std::uint64_t cache_misses;

// Wipes and frees every cached key and starts an empty cache (a new epoch).
void CacheReset();

// Whether the cache exists (CacheReset ran once).
bool CacheExists();

// The memory context of the cache's entries and their catalog copies.
MemoryContext CacheContext();

// Frees the OpenSSL contexts of the versions this transaction used.
void CacheReleaseContexts();

// Evicts least recently used versions and key names beyond pgkm.key_cache_size, sparing the
// version the previous KeyFor* call returned.
void CacheTrim();

// Returns the cached version, or nullptr.
VersionEntry *CacheFindVersion(std::uint32_t key_id, std::uint32_t version);

// Enters a version read from the catalog (not cached yet) as the most recently used, and
// evicts beyond the bound, sparing it and the version the previous KeyFor* call returned.
VersionEntry *CacheAddVersion(const VersionEntry &loaded);

// Returns the cached key with this name or id, as the most recently used, or nullptr.
KeyEntry *CacheFindKeyByName(const char *name);
KeyEntry *CacheFindKeyById(std::uint32_t key_id);

// Enters or updates a key read from the catalog (its recency node aside) as the most recently
// used, and evicts key names beyond the bound, sparing it.
KeyEntry *CacheAddKey(const KeyEntry &loaded);

// Counts one token unwrap that took ms milliseconds.
void CacheNoteUnwrap(double ms);

// Whether the cache holds more than pgkm.key_cache_size versions or key names (lowered).
inline bool CacheOverCapacity()
{
	return cache_version_count > guc_key_cache_size || cache_key_count > guc_key_cache_size;
}

// Marks a version as returned by a KeyFor* call: most recently used, used by this transaction
// (whose end frees its OpenSSL contexts), spared by the next eviction; counts the lookup as a
// miss when it read the catalog or the token. O(1), no allocation: every row calls it.
inline VersionEntry *CacheReturned(VersionEntry *v, bool missed)
{
	dlist_move_head(&cache_versions_lru, &v->lru);
	if (!v->in_xact)
	{
		v->in_xact = true;
		dlist_push_head(&cache_versions_xact, &v->xact_node);
	}
	cache_last_returned = v;
	if (missed)
		cache_misses++;
	else
		cache_hits++;
	return v;
}

} // namespace pgkm::pg
