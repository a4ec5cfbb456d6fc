// The backend's cache of keys and unwrapped DEKs: read from the catalog once, unwrapped
// through the token once per DEK, invalidated by the shared generation counter, and bounded
// by pgkm.key_cache_size with least-recently-used eviction.
#pragma once

#include "pgkm/core/key_material.hpp"

#include <cstddef>
#include <cstdint>

#include "pgkm/pg/postgres.hpp"
#include "pgkm/pg/shmem.hpp"

namespace pgkm::pg
{

enum class VersionState : std::uint8_t
{
	Active,
	DecryptOnly,
	Disabled,
	Retired,
	Destroyed,
};

// One cached key version. Lives in the cache's memory context until it is evicted or the
// cache is reset; an evicted entry's memory stays allocated (with serial 0) until the reset.
struct VersionEntry
{
	std::uint64_t hash_key; // key_id << 32 | version
	std::uint64_t serial;   // unique while cached, 0 once evicted: call sites compare it
	dlist_node lru;         // in the cache's recency list, most recently used first
	dlist_node xact_node;   // in the list of versions used by this transaction, if in_xact
	bool in_xact;
	std::uint32_t key_id;
	std::uint32_t version;
	VersionState state;
	core::Algorithm algorithm;      // the key's: what its material can do
	std::uint8_t blind_index_bytes; // blind-index keys: HMAC bytes kept; otherwise 0
	char key_name[NAMEDATALEN];
	Oid encrypt_role;
	Oid decrypt_role;
	core::KeyMaterial *material; // null until first use; owned
	CounterSlot *counter;        // encryption counter in shared memory, or null
	char master_label[128];      // empty once destroyed
	bytea *wrapped;              // freed once unwrapped
	bytea *check;
};

// Returns the active version of a key for encrypting, with its key material ready,
// after checking that the caller may encrypt with it. Raises the documented errors.
VersionEntry *KeyForEncrypt(FmgrInfo *flinfo, text *key_name);

// Raises wrong_object_type unless a key of algorithm have may be used where want is needed;
// function names the SQL function, for the message.
void RequireKeyAlgorithm(const char *key_name, core::Algorithm have, core::Algorithm want,
						 const char *function);

// Returns the active version of a deterministic (aes-256-siv) or blind-index key, as want
// says, with its key material ready, for computing a value to store or to look up: the caller
// must have the privileges of the key's encrypt or decrypt role (either may compute lookup
// values: a writer stores them, a reader searches with them). Raises the documented errors,
// and wrong_object_type when the key's algorithm is not want.
VersionEntry *KeyForLookup(FmgrInfo *flinfo, text *key_name, core::Algorithm want);

// The most versions KeyLookupVersions returns.
inline constexpr int kMaxLookupVersions = 32;

// Writes the key id and the versions of a named key of algorithm want that lookups must try
// (the active one first, then decrypt-only ones, newest first) and returns how many; each is
// then prepared with KeyForLookupVersion. Raises like KeyForLookup.
int KeyLookupVersions(text *key_name, core::Algorithm want, std::uint32_t *key_id,
					  std::uint32_t versions[kMaxLookupVersions]);

// Returns one version listed by KeyLookupVersions, checked and ready like KeyForLookup, or
// nullptr when it was retired since the list was read (no value uses it: skip it).
VersionEntry *KeyForLookupVersion(FmgrInfo *flinfo, std::uint32_t key_id, std::uint32_t version,
								  core::Algorithm want);

// Returns the active version of the key with this id for encrypting, like KeyForEncrypt:
// for re-encrypting a ciphertext under its key's newest version.
VersionEntry *KeyForEncryptById(FmgrInfo *flinfo, std::uint32_t key_id);

// Returns the active version of the deterministic or blind-index key with this id (of
// algorithm want), checked and ready like KeyForLookup: for rebuilding a blind index.
VersionEntry *KeyForLookupById(FmgrInfo *flinfo, std::uint32_t key_id, core::Algorithm want);

// Returns a version for decrypting, with its key material ready, after checking its
// state and that the caller may decrypt with it.
VersionEntry *KeyForDecrypt(FmgrInfo *flinfo, std::uint32_t key_id, std::uint32_t version);

// Returns a version ready to decrypt if the cache holds it as KeyForDecrypt would return it
// (the cache current, the version usable, its material unwrapped, the caller holding its
// decrypt role), else nullptr. Never reads the catalog or the token and never raises: for
// pgkm.verify, whose catalog may change under a long run and which then finds out why.
VersionEntry *CachedForDecrypt(std::uint32_t key_id, std::uint32_t version);

// The KeyFor* functions remember their key in flinfo->fn_extra (allocated in fn_mcxt; no
// other field is used), so each needs a call site of its own. An entry they return stays
// valid until the next KeyFor* call, which may empty the cache; KeyCacheEpoch() changes
// whenever it does, so a caller that holds two entries can check that the first survived.
// Eviction (pgkm.key_cache_size) never takes the entry that the previous KeyFor* call
// returned, nor the one the current call returns, and leaves the epoch alone.
std::uint64_t KeyCacheEpoch();

// This backend's key cache in figures (pgkm.key_cache_stats()).
struct KeyCacheStats
{
	int capacity;             // pgkm.key_cache_size
	int cached_versions;      // version entries, with or without key material
	int cached_keys;          // key names (with their ids and active versions)
	std::uint64_t hits;       // lookups answered from the cache: no catalog read, no token call
	std::uint64_t misses;     // lookups that read the catalog or unwrapped through the token
	std::uint64_t unwraps;    // token unwrap calls
	double unwrap_ms;         // time spent in them, waiting for the token lock included
	std::uint64_t evictions;  // versions evicted as least recently used
	std::uint64_t resets;     // times the cache was emptied (catalog change, TTL, rollback)
	std::size_t locked_bytes; // secure memory locked in RAM (key slots and larger buffers)
	std::size_t arena_pages;  // pages of the secure arena
};

// Fills in this backend's figures; never reads the catalog or the token.
void KeyCacheReadStats(KeyCacheStats *out);

// Returns the name of a key id as a palloc'd string, or NULL if there is no such key.
char *KeyNameForId(std::uint32_t key_id);

// Returns the name of a key id if the cache knows it (never reads the catalog, so it is safe
// while an error is being handled), or nullptr.
const char *CachedKeyName(std::uint32_t key_id, std::uint32_t version);

// Lets pgkm_rewrap and pgkm_blind_index_rebuild use key_id and second_key_id (0: none)
// without the caller holding the keys' roles. Only the worker calls it, around a batch that
// runs as the table's owner: a re-encryption job allows its key; a blind-index job allows
// the blind-index key and its source column's key. The plaintext never leaves those two
// functions, and pgkm_decrypt, pgkm_encrypt and the lookup functions still check roles.
void KeyCacheAllowRewrap(std::uint32_t key_id, std::uint32_t second_key_id = 0);

// Marks the key lookups of one pgkm_rewrap or pgkm_blind_index_rebuild call (true before them,
// false after or on error): only they may use the worker's allowance.
void KeyCacheRewrapping(bool on);

// Notes that this transaction changed the key catalog: at commit every backend's cache
// is invalidated; at abort this backend's is.
void KeyCacheCatalogChanged();

// Registers the transaction and relation-cache callbacks; once per backend.
void KeyCacheInit();

// Returns the state name as stored in pgkm.key_versions.
const char *VersionStateName(VersionState state);

} // namespace pgkm::pg
