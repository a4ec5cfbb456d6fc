// The key cache's storage: hash tables of key names, key ids and key versions in the cache's
// memory context, recency lists for least-recently-used eviction beyond
// pgkm.key_cache_size, and the figures of pgkm.key_cache_stats(). An evicted version's key
// material is wiped and freed at once; its entry goes to the hash table's free list with
// serial 0, so a call site still pointing at it sees that it is gone.
#include "pgkm/core/secure_arena.hpp"
#include "pgkm/pg/token.hpp"

#include "pgkm/pg/key_cache_store.hpp"

namespace pgkm::pg
{

std::uint64_t cache_epoch = 1;
dlist_head cache_versions_lru = DLIST_STATIC_INIT(cache_versions_lru);
dlist_head cache_versions_xact = DLIST_STATIC_INIT(cache_versions_xact);
VersionEntry *cache_last_returned = nullptr;
int cache_version_count = 0;
int cache_key_count = 0;
std::uint64_t cache_hits = 0;
std::uint64_t cache_misses = 0;

namespace
{

// The cached keys by id.
struct KeyIdEntry
{
	std::uint32_t key_id; // hash key
	KeyEntry *key;
};

MemoryContext cache_context = nullptr;
HTAB *keys_by_name = nullptr;
HTAB *keys_by_id = nullptr;
HTAB *versions_by_id = nullptr;
dlist_head keys_lru = DLIST_STATIC_INIT(keys_lru); // most recently used first
std::uint64_t next_serial = 1;
std::uint64_t count_unwraps = 0;
std::uint64_t count_evictions = 0;
std::uint64_t count_resets = 0;
double unwrap_ms = 0;

// Returns the version whose recency node this is (ilist.h's dlist_container is C only).
VersionEntry *VersionOfLru(dlist_node *node)
{
	return reinterpret_cast<VersionEntry *>(reinterpret_cast<char *>(node) -
											offsetof(VersionEntry, lru));
}

// Returns the version whose node in the transaction's list this is.
VersionEntry *VersionOfXact(dlist_node *node)
{
	return reinterpret_cast<VersionEntry *>(reinterpret_cast<char *>(node) -
											offsetof(VersionEntry, xact_node));
}

// Returns the key whose recency node this is.
KeyEntry *KeyOfLru(dlist_node *node)
{
	return reinterpret_cast<KeyEntry *>(reinterpret_cast<char *>(node) - offsetof(KeyEntry, lru));
}

// Evicts one version: wipes and frees its key material and OpenSSL contexts, and frees its
// catalog copies.
void EvictVersion(VersionEntry *v)
{
	DestroyKeyMaterial(v->material);
	v->material = nullptr;
	if (v->wrapped)
		pfree(v->wrapped);
	if (v->check)
		pfree(v->check);
	v->wrapped = v->check = nullptr;
	if (v->in_xact)
		dlist_delete(&v->xact_node);
	v->in_xact = false;
	dlist_delete(&v->lru);
	v->serial = 0;
	hash_search(versions_by_id, &v->hash_key, HASH_REMOVE, nullptr);
	cache_version_count--;
	count_evictions++;
}

// Evicts the least recently used versions beyond pgkm.key_cache_size, sparing the version
// the previous KeyFor* call returned (pgkm_rewrap holds it while it looks up the second) and
// keep, the one the current call is about to return.
void TrimVersions(const VersionEntry *keep)
{
	dlist_node *node = cache_versions_lru.head.prev;
	while (cache_version_count > guc_key_cache_size && node != &cache_versions_lru.head)
	{
		dlist_node *older = node->prev;
		VersionEntry *v = VersionOfLru(node);
		if (v != keep && v != cache_last_returned)
			EvictVersion(v);
		node = older;
	}
}

// Evicts the least recently used key names beyond pgkm.key_cache_size, sparing keep. Nothing
// holds a key entry across calls, and version entries do not point at them.
void TrimKeys(const KeyEntry *keep)
{
	dlist_node *node = keys_lru.head.prev;
	while (cache_key_count > guc_key_cache_size && node != &keys_lru.head)
	{
		dlist_node *older = node->prev;
		KeyEntry *k = KeyOfLru(node);
		if (k != keep)
		{
			dlist_delete(&k->lru);
			auto *by_id =
				static_cast<KeyIdEntry *>(hash_search(keys_by_id, &k->key_id, HASH_FIND, nullptr));
			if (by_id && by_id->key == k)
				hash_search(keys_by_id, &k->key_id, HASH_REMOVE, nullptr);
			hash_search(keys_by_name, k->name, HASH_REMOVE, nullptr);
			cache_key_count--;
		}
		node = older;
	}
}

} // namespace

void CacheReset()
{
	for (dlist_node *n = cache_versions_lru.head.next; n != &cache_versions_lru.head; n = n->next)
	{
		VersionEntry *v = VersionOfLru(n);
		DestroyKeyMaterial(v->material);
		v->material = nullptr;
		v->serial = 0;
	}
	if (cache_version_count > 0 || cache_key_count > 0)
		count_resets++;
	if (cache_context == nullptr)
		cache_context =
			AllocSetContextCreate(TopMemoryContext, "pgkm key cache", ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(cache_context);

	HASHCTL ctl;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(KeyEntry);
	ctl.hcxt = cache_context;
	keys_by_name = hash_create("pgkm keys", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(std::uint32_t);
	ctl.entrysize = sizeof(KeyIdEntry);
	ctl.hcxt = cache_context;
	keys_by_id = hash_create("pgkm key ids", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(std::uint64_t);
	ctl.entrysize = sizeof(VersionEntry);
	ctl.hcxt = cache_context;
	versions_by_id =
		hash_create("pgkm key versions", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dlist_init(&cache_versions_lru);
	dlist_init(&cache_versions_xact);
	dlist_init(&keys_lru);
	cache_version_count = 0;
	cache_key_count = 0;
	cache_last_returned = nullptr;
	cache_epoch++;
}

bool CacheExists()
{
	return keys_by_name != nullptr;
}

MemoryContext CacheContext()
{
	return cache_context;
}

// Their key schedules live in OpenSSL's ordinary heap, so they exist only while a transaction
// uses them; between transactions the working keys are only in locked, undumped buffers.
void CacheReleaseContexts()
{
	for (dlist_node *n = cache_versions_xact.head.next; n != &cache_versions_xact.head; n = n->next)
	{
		VersionEntry *v = VersionOfXact(n);
		if (v->material)
			v->material->ReleaseContexts();
		v->in_xact = false;
	}
	dlist_init(&cache_versions_xact);
}

void CacheTrim()
{
	TrimVersions(nullptr);
	TrimKeys(nullptr);
}

VersionEntry *CacheFindVersion(std::uint32_t key_id, std::uint32_t version)
{
	std::uint64_t hash_key = (std::uint64_t)key_id << 32 | version;
	return static_cast<VersionEntry *>(hash_search(versions_by_id, &hash_key, HASH_FIND, nullptr));
}

VersionEntry *CacheAddVersion(const VersionEntry &loaded)
{
	bool found;
	auto *entry = static_cast<VersionEntry *>(
		hash_search(versions_by_id, &loaded.hash_key, HASH_ENTER, &found));
	Assert(!found);
	*entry = loaded;
	entry->serial = next_serial++;
	entry->in_xact = false;
	dlist_push_head(&cache_versions_lru, &entry->lru);
	cache_version_count++;
	TrimVersions(entry);
	return entry;
}

KeyEntry *CacheFindKeyByName(const char *name)
{
	auto *key = static_cast<KeyEntry *>(hash_search(keys_by_name, name, HASH_FIND, nullptr));
	if (key)
		dlist_move_head(&keys_lru, &key->lru);
	return key;
}

KeyEntry *CacheFindKeyById(std::uint32_t key_id)
{
	auto *by_id = static_cast<KeyIdEntry *>(hash_search(keys_by_id, &key_id, HASH_FIND, nullptr));
	if (by_id == nullptr || by_id->key->key_id != key_id)
		return nullptr;
	dlist_move_head(&keys_lru, &by_id->key->lru);
	return by_id->key;
}

KeyEntry *CacheAddKey(const KeyEntry &loaded)
{
	bool found;
	auto *key = static_cast<KeyEntry *>(hash_search(keys_by_name, loaded.name, HASH_ENTER, &found));
	if (found && key->key_id != loaded.key_id)
		hash_search(keys_by_id, &key->key_id, HASH_REMOVE, nullptr);
	dlist_node lru = key->lru;
	*key = loaded;
	if (found)
	{
		key->lru = lru; // its neighbours point at this node, which has not moved
		dlist_move_head(&keys_lru, &key->lru);
	}
	else
	{
		dlist_push_head(&keys_lru, &key->lru);
		cache_key_count++;
	}
	auto *by_id =
		static_cast<KeyIdEntry *>(hash_search(keys_by_id, &key->key_id, HASH_ENTER, nullptr));
	by_id->key = key;
	TrimKeys(key);
	return key;
}

void CacheNoteUnwrap(double ms)
{
	count_unwraps++;
	unwrap_ms += ms;
}

void KeyCacheReadStats(KeyCacheStats *out)
{
	core::SecureMemoryStats memory = core::SecureMemoryStatsNow();
	out->capacity = guc_key_cache_size;
	out->cached_versions = cache_version_count;
	out->cached_keys = cache_key_count;
	out->hits = cache_hits;
	out->misses = cache_misses;
	out->unwraps = count_unwraps;
	out->unwrap_ms = unwrap_ms;
	out->evictions = count_evictions;
	out->resets = count_resets;
	out->locked_bytes = memory.locked_bytes;
	out->arena_pages = memory.arena_pages;
}

} // namespace pgkm::pg
