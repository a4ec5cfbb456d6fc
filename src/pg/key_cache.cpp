// The backend's key cache: key names to active versions, (key id, version) to unwrapped
// key material. Entries are read from the catalog on first use and unwrapped through the
// token at most once per DEK; a change of the shared generation counter, the TTL, a
// catalog change in an aborted transaction or a relation-cache reset drops them all.
#include "pgkm/core/secure_buffer.hpp"
#include "pgkm/pg/token.hpp"

#include <sys/resource.h>

#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/catalog.hpp"
#include "pgkm/pg/erasure.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/redact.hpp"
#include "pgkm/pg/shmem.hpp"

extern "C"
{
#include "utils/array.h"
}

namespace pgkm::pg
{

namespace
{

// One cached key name: its id, active version and roles.
struct KeyEntry
{
	char name[NAMEDATALEN]; // hash key
	std::uint32_t key_id;
	std::uint32_t active_version; // 0: no active version
	core::Algorithm algorithm;
	int lookup_count; // versions that lookups try: active first, then decrypt-only, newest first
	std::uint32_t lookup_versions[kMaxLookupVersions];
};

// What a call site remembers between rows, in fn_extra.
struct CallSiteCache
{
	std::uint64_t epoch;
	VersionEntry *version;
	int name_len; // KeyForEncrypt: the key name's length; otherwise one of the kinds below
	char name[NAMEDATALEN];
};
inline constexpr int kSiteDecrypt = -1;    // KeyForDecrypt
inline constexpr int kSiteById = -2;       // KeyForEncryptById
inline constexpr int kSiteLookup = -3;     // KeyForLookupVersion
inline constexpr int kSiteLookupById = -4; // KeyForLookupById

MemoryContext cache_context = nullptr;
HTAB *keys_by_name = nullptr;
HTAB *versions_by_id = nullptr;
std::uint64_t cache_epoch = 1;      // bumped at every reset; call sites compare with it
std::uint64_t cache_generation = 0; // the shared generation the cache was built under
TimestampTz cache_expires = 0;
bool catalog_changed_in_xact = false;
bool initialized = false;
bool stale_until_xact_end = false; // read under an old snapshot: drop at transaction end
std::uint32_t rewrap_allowed_keys[2] = {0, 0}; // KeyCacheAllowRewrap
bool rewrapping = false;                       // KeyCacheRewrapping
bool contexts_live = false; // a cached key may hold OpenSSL contexts (set by each KeyFor*)
bool warned_unlocked = false;

// Frees every cached key, wiping key material, and starts an empty cache.
void Reset()
{
	if (versions_by_id)
	{
		HASH_SEQ_STATUS status;
		hash_seq_init(&status, versions_by_id);
		for (auto *v = static_cast<VersionEntry *>(hash_seq_search(&status)); v;
			 v = static_cast<VersionEntry *>(hash_seq_search(&status)))
		{
			DestroyKeyMaterial(v->material);
			v->material = nullptr;
		}
	}
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
	ctl.keysize = sizeof(std::uint64_t);
	ctl.entrysize = sizeof(VersionEntry);
	ctl.hcxt = cache_context;
	versions_by_id =
		hash_create("pgkm key versions", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	cache_epoch++;
}

// Frees the OpenSSL contexts of every cached key. Their key schedules live in OpenSSL's
// ordinary heap, so they exist only while a transaction uses them; between transactions the
// working keys are only in locked, undumped buffers.
void ReleaseContexts()
{
	contexts_live = false;
	if (versions_by_id == nullptr)
		return;
	HASH_SEQ_STATUS status;
	hash_seq_init(&status, versions_by_id);
	for (auto *v = static_cast<VersionEntry *>(hash_seq_search(&status)); v;
		 v = static_cast<VersionEntry *>(hash_seq_search(&status)))
	{
		if (v->material)
			v->material->ReleaseContexts();
	}
}

// Warns, once per backend, that key memory could not be locked (RLIMIT_MEMLOCK too low).
void WarnUnlocked()
{
	if (warned_unlocked)
		return;
	warned_unlocked = true;
	struct rlimit limit;
	char shown[64] = "unknown";
	if (getrlimit(RLIMIT_MEMLOCK, &limit) == 0)
	{
		if (limit.rlim_cur == RLIM_INFINITY)
			snprintf(shown, sizeof(shown), "unlimited");
		else
			snprintf(shown, sizeof(shown), "%llu bytes", (unsigned long long)limit.rlim_cur);
	}
	ereport(WARNING,
			(errmsg("pgkm could not lock key memory in RAM"),
			 errdetail("mlock() failed under this process's memory-lock limit (RLIMIT_MEMLOCK: "
					   "%s); this session's keys may be written to swap. They are still wiped "
					   "and kept out of core dumps.",
					   shown),
			 errhint("Raise the memory-lock limit of the PostgreSQL service (LimitMEMLOCK= in "
					 "its systemd unit, or ulimit -l).")));
}

// Drops the cache if the shared generation moved or the TTL ran out; notes the data path's
// use for the redaction of the statement's parameters.
inline void Validate()
{
	RequireSharedMemory();
	RedactNoteDataPathUse();
	std::uint64_t generation = ReadGeneration();
	if (likely(generation == cache_generation &&
			   GetCurrentStatementStartTimestamp() < cache_expires && keys_by_name != nullptr))
		return;
	KeyCacheInit();
	Reset();
	cache_generation = generation;
	cache_expires =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (int64)guc_key_cache_ttl * 1000);
}

// Parses a key algorithm name from the catalog (pgkm.keys.algorithm).
core::Algorithm ParseAlgorithm(const char *name)
{
	if (strcmp(name, "aes-256-gcm") == 0)
		return core::Algorithm::Aes256Gcm;
	if (strcmp(name, "aes-256-siv") == 0)
		return core::Algorithm::Aes256Siv;
	if (strcmp(name, "blind-index") == 0)
		return core::Algorithm::BlindIndex;
	elog(ERROR, "pgkm: unknown key algorithm \"%s\"", name);
	pg_unreachable();
}

// Parses a version state name from the catalog.
VersionState ParseState(const char *name)
{
	if (strcmp(name, "active") == 0)
		return VersionState::Active;
	if (strcmp(name, "decrypt_only") == 0)
		return VersionState::DecryptOnly;
	if (strcmp(name, "disabled") == 0)
		return VersionState::Disabled;
	if (strcmp(name, "retired") == 0)
		return VersionState::Retired;
	if (strcmp(name, "destroyed") == 0)
		return VersionState::Destroyed;
	elog(ERROR, "pgkm: unknown key version state \"%s\"", name);
	pg_unreachable();
}

// Reads one key version from the catalog into a new cache entry; NULL if there is none.
VersionEntry *LoadVersion(std::uint32_t key_id, std::uint32_t version)
{
	static const char *sql =
		"SELECT k.name, k.encrypt_role::oid, k.decrypt_role::oid, v.state, v.wrapped_dek,"
		" v.key_check, m.label, k.algorithm, k.blind_index_bytes"
		" FROM pgkm.key_versions v"
		" JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) v.key_id"
		" LEFT JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id"
		" WHERE v.key_id OPERATOR(pg_catalog.=) $1 AND v.version OPERATOR(pg_catalog.=) $2";
	if (version > PG_INT32_MAX)
		return nullptr;
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum((int32)version)};
	CatalogSession session;
	CatalogOpen(&session);
	VersionEntry *entry = nullptr;
	bool stale;
	uint64 rows = CatalogQueryLatest(sql, 2, types, values, nullptr, &stale);
	stale_until_xact_end |= stale;
	if (rows == 1)
	{
		// Everything is read before the entry is entered, so an error leaves no half entry.
		VersionEntry loaded;
		memset(&loaded, 0, sizeof(loaded));
		loaded.hash_key = (std::uint64_t)key_id << 32 | version;
		loaded.key_id = key_id;
		loaded.version = version;
		MemoryContext old = MemoryContextSwitchTo(cache_context);
		bool isnull;
		strlcpy(loaded.key_name, CatalogText(0, 1), NAMEDATALEN);
		loaded.encrypt_role = DatumGetObjectId(CatalogValue(0, 2, &isnull));
		loaded.decrypt_role = DatumGetObjectId(CatalogValue(0, 3, &isnull));
		loaded.state = ParseState(CatalogText(0, 4));
		Datum d = CatalogValue(0, 5, &isnull);
		if (!isnull)
			loaded.wrapped = DatumGetByteaPCopy(d);
		d = CatalogValue(0, 6, &isnull);
		if (!isnull)
			loaded.check = DatumGetByteaPCopy(d);
		char *label = CatalogText(0, 7);
		strlcpy(loaded.master_label, label ? label : "", sizeof(loaded.master_label));
		loaded.algorithm = ParseAlgorithm(CatalogText(0, 8));
		d = CatalogValue(0, 9, &isnull);
		loaded.blind_index_bytes = isnull ? 0 : (std::uint8_t)DatumGetInt32(d);
		MemoryContextSwitchTo(old);
		entry = static_cast<VersionEntry *>(
			hash_search(versions_by_id, &loaded.hash_key, HASH_ENTER, nullptr));
		*entry = loaded;
	}
	CatalogClose(&session);
	return entry;
}

// Reads the key whose column (name or key_id) equals value into a new cache entry under its
// name, with its active version; NULL if there is none.
KeyEntry *LoadKeyWhere(const char *column, Oid type, Datum value)
{
	char *sql =
		psprintf("SELECT k.key_id, k.name, v.version, k.algorithm,"
				 " ARRAY(SELECT l.version FROM pgkm.key_versions l"
				 "  WHERE l.key_id OPERATOR(pg_catalog.=) k.key_id"
				 "  AND l.state OPERATOR(pg_catalog.=) ANY ('{active,decrypt_only}')"
				 "  ORDER BY l.state OPERATOR(pg_catalog.=) 'active' DESC, l.version DESC)"
				 " FROM pgkm.keys k"
				 " LEFT JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) k.key_id"
				 "  AND v.state OPERATOR(pg_catalog.=) 'active'"
				 " WHERE k.%s OPERATOR(pg_catalog.=) $1",
				 column);
	CatalogSession session;
	CatalogOpen(&session);
	KeyEntry *entry = nullptr;
	bool stale;
	uint64 rows = CatalogQueryLatest(sql, 1, &type, &value, nullptr, &stale);
	stale_until_xact_end |= stale;
	if (rows == 1)
	{
		bool isnull;
		auto key_id = (std::uint32_t)DatumGetInt64(CatalogValue(0, 1, &isnull));
		char name[NAMEDATALEN];
		strlcpy(name, CatalogText(0, 2), sizeof(name));
		Datum v = CatalogValue(0, 3, &isnull);
		std::uint32_t active = isnull ? 0 : (std::uint32_t)DatumGetInt32(v);
		core::Algorithm algorithm = ParseAlgorithm(CatalogText(0, 4));
		Datum *elems;
		int nelems;
		deconstruct_array(DatumGetArrayTypeP(CatalogValue(0, 5, &isnull)), INT4OID, 4, true,
						  TYPALIGN_INT, &elems, nullptr, &nelems);
		entry = static_cast<KeyEntry *>(hash_search(keys_by_name, name, HASH_ENTER, nullptr));
		entry->key_id = key_id;
		entry->active_version = active;
		entry->algorithm = algorithm;
		// A key with more usable versions than this is refused by lookups (KeyLookupVersions).
		entry->lookup_count = nelems;
		for (int i = 0; i < nelems && i < kMaxLookupVersions; i++)
			entry->lookup_versions[i] = (std::uint32_t)DatumGetInt32(elems[i]);
	}
	CatalogClose(&session);
	return entry;
}

// Returns the cached version entry, loading it from the catalog on a miss.
VersionEntry *FindVersion(std::uint32_t key_id, std::uint32_t version)
{
	std::uint64_t hash_key = (std::uint64_t)key_id << 32 | version;
	auto *entry =
		static_cast<VersionEntry *>(hash_search(versions_by_id, &hash_key, HASH_FIND, nullptr));
	return entry ? entry : LoadVersion(key_id, version);
}

// Unwraps the DEK of an entry through the token, once.
void EnsureMaterial(VersionEntry *v)
{
	if (v->material)
		return;
	if (v->wrapped == nullptr || v->check == nullptr || v->master_label[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key \"%s\" version %u has no key material", v->key_name, v->version)));
	core::ByteView wrapped(reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(v->wrapped)),
						   VARSIZE_ANY_EXHDR(v->wrapped));
	core::ByteView check(reinterpret_cast<const std::uint8_t *>(VARDATA_ANY(v->check)),
						 VARSIZE_ANY_EXHDR(v->check));
	core::KeyMaterial *material = nullptr;
	PGKM_TOKEN_CALL(material = UnwrapKeyMaterial(v->master_label, v->key_name, v->key_id,
												 v->version, v->algorithm, wrapped, check));
	v->material = material;
	pfree(v->wrapped);
	v->wrapped = nullptr;
	if (!material->locked())
		WarnUnlocked();
}

// Whether the worker's allowance covers v: inside one pgkm_rewrap or
// pgkm_blind_index_rebuild call, for the keys of the batch being run.
bool AllowedByWorker(const VersionEntry *v)
{
	return rewrapping && v->key_id != 0 &&
		   (v->key_id == rewrap_allowed_keys[0] || v->key_id == rewrap_allowed_keys[1]);
}

// Raises insufficient_privilege unless the current user has the privileges of role.
void CheckRole(const VersionEntry *v, Oid role, const char *action)
{
	if (likely(has_privs_of_role(GetUserId(), role)))
		return;
	if (AllowedByWorker(v))
		return;
	const char *role_name = GetUserNameFromId(role, true);
	ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("permission denied to %s with key \"%s\"", action, v->key_name),
					errdetail("Only roles with the privileges of role \"%s\" may %s with this key.",
							  role_name ? role_name : "(dropped role)", action)));
}

// Raises insufficient_privilege unless the current user has the privileges of the key's
// encrypt or decrypt role: either may compute deterministic and blind-index values.
void CheckLookupRole(const VersionEntry *v)
{
	if (likely(has_privs_of_role(GetUserId(), v->encrypt_role) ||
			   has_privs_of_role(GetUserId(), v->decrypt_role)))
		return;
	if (AllowedByWorker(v))
		return;
	const char *encrypt_name = GetUserNameFromId(v->encrypt_role, true);
	const char *decrypt_name = GetUserNameFromId(v->decrypt_role, true);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to compute lookup values with key \"%s\"", v->key_name),
			 errdetail("Only roles with the privileges of role \"%s\" or \"%s\" may compute "
					   "deterministic or blind-index values with this key.",
					   encrypt_name ? encrypt_name : "(dropped role)",
					   decrypt_name ? decrypt_name : "(dropped role)")));
}

// Raises the error that a key version's state forbids use; a version destroyed by an erasure
// says so in the DETAIL.
void RefuseState(const VersionEntry *v, const char *action)
{
	char *erased = v->state == VersionState::Destroyed ? KeyErasure(v->key_id) : nullptr;
	ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					errmsg("key \"%s\" version %u is %s and cannot be used to %s", v->key_name,
						   v->version, VersionStateName(v->state), action),
					erased ? errdetail("pgkm.erase_subject() destroyed every version of the key "
									   "%s: data under it is unrecoverable.",
									   erased)
						   : 0));
}

// Raises the error that a key has no active version (none, or the active one disabled), or
// that it was erased.
[[noreturn]] void RefuseNoActiveVersion(std::uint32_t key_id, const char *name)
{
	RefuseIfErased(key_id, name, "used to encrypt");
	ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					errmsg("key \"%s\" has no active version to encrypt with", name),
					errhint("If its active version was disabled, pgkm.enable_key_version() "
							"enables it again; pgkm.rotate_key() adds a new one.")));
	pg_unreachable();
}

// Returns the active version of a key ready to encrypt, after checking the caller's role:
// the slow path of KeyForEncrypt and KeyForEncryptById, once per call site and cache epoch.
VersionEntry *PrepareEncrypt(const KeyEntry *key, bool lookup)
{
	if (key->active_version == 0)
		RefuseNoActiveVersion(key->key_id, key->name);
	VersionEntry *v = FindVersion(key->key_id, key->active_version);
	if (v == nullptr || v->state != VersionState::Active)
		RefuseNoActiveVersion(key->key_id, key->name);
	if (lookup)
		CheckLookupRole(v);
	else
		CheckRole(v, v->encrypt_role, "encrypt");
	EnsureMaterial(v);
	if (v->counter == nullptr)
		v->counter = CounterFor(v->key_id, v->version);
	return v;
}

// Remembers a version in a call site's fn_extra for the next row.
void RememberSite(FmgrInfo *flinfo, VersionEntry *v, int name_len, const char *name)
{
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (site == nullptr)
		site = static_cast<CallSiteCache *>(
			MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(CallSiteCache)));
	site->epoch = cache_epoch;
	site->version = v;
	site->name_len = name_len;
	if (name_len > 0)
		memcpy(site->name, name, name_len);
	flinfo->fn_extra = site;
}

// Transaction callback: releases the ciphers' OpenSSL contexts when a transaction ends;
// publishes catalog changes at commit, forgets them at abort, and drops entries that were
// read under an old snapshot.
void XactCallback(XactEvent event, void *)
{
	if (contexts_live && (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
						  event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
						  event == XACT_EVENT_PREPARE))
		ReleaseContexts();
	if (stale_until_xact_end &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE))
	{
		stale_until_xact_end = false;
		cache_generation = 0;
	}
	if (!catalog_changed_in_xact)
		return;
	switch (event)
	{
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		catalog_changed_in_xact = false;
		BumpGeneration();
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		catalog_changed_in_xact = false;
		cache_generation = 0;
		break;
	default:
		break;
	}
}

// Subtransaction callback: a rolled-back savepoint may have held catalog changes.
void SubXactCallback(SubXactEvent event, SubTransactionId, SubTransactionId, void *)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && catalog_changed_in_xact)
		cache_generation = 0;
}

// Relation-cache callback: a reset of all relations, or an invalidation of pgkm.keys
// (DROP EXTENSION, for one), may mean the catalog the cache was read from is gone.
void RelcacheCallback(Datum, Oid relid)
{
	if (relid == InvalidOid || relid == CatalogKeysRelid())
		cache_generation = 0;
}

} // namespace

// Closes the token session when the backend exits.
static void TokenExit(int, Datum)
{
	TokenShutdown();
}

void KeyCacheInit()
{
	if (initialized)
		return;
	on_proc_exit(TokenExit, (Datum)0);
	RegisterXactCallback(XactCallback, nullptr);
	RegisterSubXactCallback(SubXactCallback, nullptr);
	CacheRegisterRelcacheCallback(RelcacheCallback, (Datum)0);
	initialized = true;
}

void KeyCacheAllowRewrap(std::uint32_t key_id, std::uint32_t second_key_id)
{
	rewrap_allowed_keys[0] = key_id;
	rewrap_allowed_keys[1] = second_key_id;
}

void KeyCacheRewrapping(bool on)
{
	rewrapping = on;
}

void KeyCacheCatalogChanged()
{
	KeyCacheInit();
	catalog_changed_in_xact = true;
	cache_generation = 0;
}

const char *VersionStateName(VersionState state)
{
	switch (state)
	{
	case VersionState::Active:
		return "active";
	case VersionState::DecryptOnly:
		return "decrypt_only";
	case VersionState::Disabled:
		return "disabled";
	case VersionState::Retired:
		return "retired";
	case VersionState::Destroyed:
		return "destroyed";
	}
	return "unknown";
}

// Refuses a key name that names no key, without repeating it: a call with its arguments
// swapped, pgkm_encrypt(key_name, value), passes the plaintext as the key name, and the
// message goes to the client, the server log and the audit log.
[[noreturn]] static void ReportUnknownKeyName(int name_len)
{
	audit_failing.key_name = nullptr;
	ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("key does not exist"),
					errdetail("No key has the name given (%d bytes); an unknown name is not shown, "
							  "in case it is a value passed in the wrong argument position.",
							  name_len),
					errhint("Check the key name and the argument order: "
							"pgkm_encrypt(value, key_name [, context]).")));
	pg_unreachable();
}

VersionEntry *KeyForEncrypt(FmgrInfo *flinfo, text *key_name)
{
	Validate();
	contexts_live = true;
	int name_len = VARSIZE_ANY_EXHDR(key_name);
	const char *name = VARDATA_ANY(key_name);
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	VersionEntry *v;
	if (likely(site && site->epoch == cache_epoch && site->name_len == name_len &&
			   memcmp(site->name, name, name_len) == 0))
		v = site->version;
	else
	{
		if (name_len == 0 || name_len >= NAMEDATALEN)
			ReportUnknownKeyName(name_len);
		char cname[NAMEDATALEN];
		memcpy(cname, name, name_len);
		cname[name_len] = '\0';
		auto *key = static_cast<KeyEntry *>(hash_search(keys_by_name, cname, HASH_FIND, nullptr));
		if (key == nullptr)
			key = LoadKeyWhere("name", TEXTOID, CStringGetTextDatum(cname));
		if (key == nullptr)
			ReportUnknownKeyName(name_len);
		RequireKeyAlgorithm(key->name, key->algorithm, core::Algorithm::Aes256Gcm, "pgkm_encrypt");
		v = PrepareEncrypt(key, false);
		RememberSite(flinfo, v, name_len, name);
		return v;
	}
	CheckRole(v, v->encrypt_role, "encrypt");
	return v;
}

// Finds a key by its name (text argument) in the cache or the catalog; raises the unknown-key
// error (without the name) when there is none.
static KeyEntry *KeyByName(text *key_name)
{
	int name_len = VARSIZE_ANY_EXHDR(key_name);
	if (name_len == 0 || name_len >= NAMEDATALEN)
		ReportUnknownKeyName(name_len);
	char cname[NAMEDATALEN];
	memcpy(cname, VARDATA_ANY(key_name), name_len);
	cname[name_len] = '\0';
	auto *key = static_cast<KeyEntry *>(hash_search(keys_by_name, cname, HASH_FIND, nullptr));
	if (key == nullptr)
		key = LoadKeyWhere("name", TEXTOID, CStringGetTextDatum(cname));
	if (key == nullptr)
		ReportUnknownKeyName(name_len);
	return key;
}

// Names the SQL function that computes values of an algorithm, for messages.
static const char *LookupFunction(core::Algorithm want)
{
	return want == core::Algorithm::BlindIndex ? "pgkm_blind_index" : "pgkm_encrypt_det";
}

void RequireKeyAlgorithm(const char *key_name, core::Algorithm have, core::Algorithm want,
						 const char *function)
{
	if (have == want)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_WRONG_OBJECT_TYPE),
			 errmsg("key \"%s\" (algorithm %s) cannot be used by %s", key_name,
					core::AlgorithmName(have), function),
			 errdetail("%s needs a key created with algorithm => '%s'. A key serves one "
					   "algorithm only, so that randomized, deterministic and blind-index values "
					   "never share a key.",
					   function, core::AlgorithmName(want)),
			 errhint("Create a key for this use: pgkm.create_key(name, algorithm => '%s').",
					 core::AlgorithmName(want))));
}

VersionEntry *KeyForLookup(FmgrInfo *flinfo, text *key_name, core::Algorithm want)
{
	Validate();
	contexts_live = true;
	int name_len = VARSIZE_ANY_EXHDR(key_name);
	const char *name = VARDATA_ANY(key_name);
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->name_len == name_len &&
			   memcmp(site->name, name, name_len) == 0))
	{
		CheckLookupRole(site->version);
		return site->version;
	}
	KeyEntry *key = KeyByName(key_name);
	RequireKeyAlgorithm(key->name, key->algorithm, want, LookupFunction(want));
	VersionEntry *v = PrepareEncrypt(key, true);
	RememberSite(flinfo, v, name_len, name);
	return v;
}

int KeyLookupVersions(text *key_name, core::Algorithm want, std::uint32_t *key_id,
					  std::uint32_t versions[kMaxLookupVersions])
{
	Validate();
	KeyEntry *key = KeyByName(key_name);
	RequireKeyAlgorithm(key->name, key->algorithm, want, LookupFunction(want));
	if (key->lookup_count == 0)
		RefuseNoActiveVersion(key->key_id, key->name);
	if (key->lookup_count > kMaxLookupVersions)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("key \"%s\" has %d usable versions; lookups try at most %d",
							   key->name, key->lookup_count, kMaxLookupVersions),
						errhint("Let the re-encryption jobs finish and retire the old versions "
								"(pgkm.rotation_progress shows them).")));
	*key_id = key->key_id;
	for (int i = 0; i < key->lookup_count; i++)
		versions[i] = key->lookup_versions[i];
	return key->lookup_count;
}

VersionEntry *KeyForLookupVersion(FmgrInfo *flinfo, std::uint32_t key_id, std::uint32_t version,
								  core::Algorithm want)
{
	Validate();
	contexts_live = true;
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->name_len == kSiteLookup &&
			   site->version->key_id == key_id && site->version->version == version))
	{
		CheckLookupRole(site->version);
		return site->version;
	}
	VersionEntry *v = FindVersion(key_id, version);
	if (v == nullptr)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("key version %u of key id %u does not exist", version, key_id)));
	RequireKeyAlgorithm(v->key_name, v->algorithm, want, LookupFunction(want));
	if (v->state != VersionState::Active && v->state != VersionState::DecryptOnly)
		RefuseState(v, "look up values");
	CheckLookupRole(v);
	EnsureMaterial(v);
	RememberSite(flinfo, v, kSiteLookup, nullptr);
	return v;
}

// Finds a key by its id in the cache or the catalog; raises undefined_object if there is none.
static KeyEntry *KeyById(std::uint32_t key_id)
{
	HASH_SEQ_STATUS status;
	hash_seq_init(&status, keys_by_name);
	for (auto *k = static_cast<KeyEntry *>(hash_seq_search(&status)); k;
		 k = static_cast<KeyEntry *>(hash_seq_search(&status)))
	{
		if (k->key_id == key_id)
		{
			hash_seq_term(&status);
			return k;
		}
	}
	KeyEntry *key = LoadKeyWhere("key_id", INT8OID, Int64GetDatum(key_id));
	if (key == nullptr)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("key id %u does not exist", key_id),
				 errdetail("The ciphertext was made under a key that is not in this "
						   "database's pgkm catalog.")));
	return key;
}

VersionEntry *KeyForEncryptById(FmgrInfo *flinfo, std::uint32_t key_id)
{
	Validate();
	contexts_live = true;
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->name_len == kSiteById &&
			   site->version->key_id == key_id))
	{
		CheckRole(site->version, site->version->encrypt_role, "encrypt");
		return site->version;
	}
	VersionEntry *v = PrepareEncrypt(KeyById(key_id), false);
	RememberSite(flinfo, v, kSiteById, nullptr);
	return v;
}

VersionEntry *KeyForLookupById(FmgrInfo *flinfo, std::uint32_t key_id, core::Algorithm want)
{
	Validate();
	contexts_live = true;
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->name_len == kSiteLookupById &&
			   site->version->key_id == key_id))
	{
		CheckLookupRole(site->version);
		return site->version;
	}
	KeyEntry *key = KeyById(key_id);
	RequireKeyAlgorithm(key->name, key->algorithm, want, LookupFunction(want));
	VersionEntry *v = PrepareEncrypt(key, true);
	RememberSite(flinfo, v, kSiteLookupById, nullptr);
	return v;
}

VersionEntry *KeyForDecrypt(FmgrInfo *flinfo, std::uint32_t key_id, std::uint32_t version)
{
	Validate();
	contexts_live = true;
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	VersionEntry *v;
	if (likely(site && site->epoch == cache_epoch && site->version->key_id == key_id &&
			   site->version->version == version))
		v = site->version;
	else
	{
		v = FindVersion(key_id, version);
		if (v == nullptr)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
							errmsg("key version %u of key id %u does not exist", version, key_id),
							errdetail("The ciphertext was made under a key that is not in this "
									  "database's pgkm catalog.")));
		if (v->state != VersionState::Active && v->state != VersionState::DecryptOnly)
			RefuseState(v, "decrypt");
		CheckRole(v, v->decrypt_role, "decrypt");
		EnsureMaterial(v);
		RememberSite(flinfo, v, kSiteDecrypt, nullptr);
		return v;
	}
	CheckRole(v, v->decrypt_role, "decrypt");
	return v;
}

const char *CachedKeyName(std::uint32_t key_id, std::uint32_t version)
{
	if (versions_by_id == nullptr || keys_by_name == nullptr)
		return nullptr;
	std::uint64_t hash_key = (std::uint64_t)key_id << 32 | version;
	auto *v =
		static_cast<VersionEntry *>(hash_search(versions_by_id, &hash_key, HASH_FIND, nullptr));
	if (v)
		return v->key_name;
	HASH_SEQ_STATUS status;
	hash_seq_init(&status, keys_by_name);
	for (auto *k = static_cast<KeyEntry *>(hash_seq_search(&status)); k;
		 k = static_cast<KeyEntry *>(hash_seq_search(&status)))
	{
		if (k->key_id == key_id)
		{
			hash_seq_term(&status);
			return k->name;
		}
	}
	return nullptr;
}

std::uint64_t KeyCacheEpoch()
{
	return cache_epoch;
}

char *KeyNameForId(std::uint32_t key_id)
{
	static const char *sql = "SELECT name FROM pgkm.keys WHERE key_id OPERATOR(pg_catalog.=) $1";
	Oid types[1] = {INT8OID};
	Datum values[1] = {Int64GetDatum(key_id)};
	MemoryContext caller = CurrentMemoryContext;
	CatalogSession session;
	CatalogOpen(&session);
	char *name = nullptr;
	if (CatalogExec(sql, 1, types, values, nullptr, SPI_OK_SELECT) == 1)
	{
		MemoryContext old = MemoryContextSwitchTo(caller);
		name = CatalogText(0, 1);
		MemoryContextSwitchTo(old);
	}
	CatalogClose(&session);
	return name;
}

} // namespace pgkm::pg
