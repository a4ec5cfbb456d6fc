// The backend's key cache: key names to active versions, (key id, version) to unwrapped
// key material. Entries are read from the catalog on first use and unwrapped through the
// token at most once per DEK while cached. At most pgkm.key_cache_size versions, and as many
// key names, are kept (key_cache_store.cpp): beyond that the least recently used is evicted
// and its key wiped. A change of the shared generation counter, the TTL, a catalog change in
// an aborted transaction or a relation-cache reset drops them all.
#include "pgkm/pg/token.hpp"

#include <sys/resource.h>

#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/key_cache_store.hpp"
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

// What a call site remembers between rows, in fn_extra. The entry is used again only if the
// cache was not reset since (epoch) and the entry not evicted (serial).
struct CallSiteCache
{
	std::uint64_t epoch;
	std::uint64_t serial;
	VersionEntry *version;
	int name_len; // KeyForEncrypt: the key name's length; otherwise one of the kinds below
	char name[NAMEDATALEN];
};
inline constexpr int kSiteDecrypt = -1;    // KeyForDecrypt
inline constexpr int kSiteById = -2;       // KeyForEncryptById
inline constexpr int kSiteLookup = -3;     // KeyForLookupVersion
inline constexpr int kSiteLookupById = -4; // KeyForLookupById

bool lookup_missed = false;         // the current KeyFor* call read the catalog or the token
std::uint64_t cache_generation = 0; // the shared generation the cache was built under
TimestampTz cache_expires = 0;
bool catalog_changed_in_xact = false;
bool initialized = false;
bool stale_until_xact_end = false; // read under an old snapshot: drop at transaction end
std::uint32_t rewrap_allowed_keys[2] = {0, 0}; // KeyCacheAllowRewrap
bool rewrapping = false;                       // KeyCacheRewrapping
bool warned_unlocked = false;

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

// Whether the cache still holds: the shared generation it was filled under is generation,
// and the TTL has not run out for this statement.
inline bool CacheCurrent(std::uint64_t generation)
{
	return generation == cache_generation && GetCurrentStatementStartTimestamp() < cache_expires &&
		   CacheExists();
}

// Whether a version's state lets it decrypt and compute lookup values.
inline bool Usable(const VersionEntry *v)
{
	return v->state == VersionState::Active || v->state == VersionState::DecryptOnly;
}

// Drops the cache if the shared generation moved or the TTL ran out, and trims it if
// pgkm.key_cache_size was lowered; notes the data path's use for the redaction of the
// statement's parameters.
inline void Validate()
{
	RequireSharedMemory();
	RedactNoteDataPathUse();
	lookup_missed = false;
	std::uint64_t generation = ReadGeneration();
	if (likely(CacheCurrent(generation)))
	{
		if (unlikely(CacheOverCapacity()))
			CacheTrim();
		return;
	}
	KeyCacheInit();
	CacheReset();
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
// Works with the SQL objects of every version from 1.0: between a package upgrade and
// ALTER EXTENSION pgkm UPDATE, pgkm.keys has no blind_index_bytes (1.4) yet.
VersionEntry *LoadVersion(std::uint32_t key_id, std::uint32_t version)
{
#define PGKM_LOAD_VERSION_SQL(blind_index_bytes)                                                   \
	"SELECT k.name, k.encrypt_role::oid, k.decrypt_role::oid, v.state, v.wrapped_dek,"             \
	" v.key_check, m.label, k.algorithm, " blind_index_bytes " FROM pgkm.key_versions v"           \
	" JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) v.key_id"                                \
	" LEFT JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id"      \
	" WHERE v.key_id OPERATOR(pg_catalog.=) $1 AND v.version OPERATOR(pg_catalog.=) $2"
	static const char *sql = PGKM_LOAD_VERSION_SQL("k.blind_index_bytes");
	static const char *sql_before_1_4 = PGKM_LOAD_VERSION_SQL("NULL::pg_catalog.int4");
#undef PGKM_LOAD_VERSION_SQL
	static SPIPlanPtr plan = nullptr;
	static SPIPlanPtr plan_before_1_4 = nullptr;
	if (version > PG_INT32_MAX)
		return nullptr;
	Oid types[2] = {INT8OID, INT4OID};
	Datum values[2] = {Int64GetDatum(key_id), Int32GetDatum((int32)version)};
	CatalogSession session;
	CatalogOpen(&session);
	VersionEntry *entry = nullptr;
	bool stale;
	bool current = get_attnum(CatalogKeysRelid(), "blind_index_bytes") != InvalidAttrNumber;
	uint64 rows = CatalogQueryLatest(current ? sql : sql_before_1_4, 2, types, values, nullptr,
									 &stale, current ? &plan : &plan_before_1_4);
	stale_until_xact_end |= stale;
	if (rows == 1)
	{
		// Everything is read before the entry is entered, so an error leaves no half entry.
		VersionEntry loaded;
		memset(&loaded, 0, sizeof(loaded));
		loaded.hash_key = (std::uint64_t)key_id << 32 | version;
		loaded.key_id = key_id;
		loaded.version = version;
		MemoryContext old = MemoryContextSwitchTo(CacheContext());
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
		entry = CacheAddVersion(loaded);
	}
	CatalogClose(&session);
	lookup_missed = true;
	return entry;
}

// Reads the key whose name (by_name) or key_id equals value into a new cache entry under its
// name, with its active version and the versions lookups try; NULL if there is none.
KeyEntry *LoadKeyWhere(bool by_name, Oid type, Datum value)
{
#define PGKM_LOAD_KEY_SQL(where)                                                                   \
	"SELECT k.key_id, k.name, v.version, k.algorithm,"                                             \
	" ARRAY(SELECT l.version FROM pgkm.key_versions l"                                             \
	"  WHERE l.key_id OPERATOR(pg_catalog.=) k.key_id"                                             \
	"  AND l.state OPERATOR(pg_catalog.=) ANY ('{active,decrypt_only}')"                           \
	"  ORDER BY l.state OPERATOR(pg_catalog.=) 'active' DESC, l.version DESC)"                     \
	" FROM pgkm.keys k"                                                                            \
	" LEFT JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) k.key_id"                   \
	"  AND v.state OPERATOR(pg_catalog.=) 'active'"                                                \
	" WHERE " where " OPERATOR(pg_catalog.=) $1"
	static const char *sql_by_name = PGKM_LOAD_KEY_SQL("k.name");
	static const char *sql_by_id = PGKM_LOAD_KEY_SQL("k.key_id");
#undef PGKM_LOAD_KEY_SQL
	static SPIPlanPtr plan_by_name = nullptr;
	static SPIPlanPtr plan_by_id = nullptr;
	CatalogSession session;
	CatalogOpen(&session);
	KeyEntry *entry = nullptr;
	bool stale;
	uint64 rows = CatalogQueryLatest(by_name ? sql_by_name : sql_by_id, 1, &type, &value, nullptr,
									 &stale, by_name ? &plan_by_name : &plan_by_id);
	stale_until_xact_end |= stale;
	if (rows == 1)
	{
		// Everything is read before the entry is entered, so an error leaves no half entry.
		KeyEntry loaded;
		memset(&loaded, 0, sizeof(loaded));
		bool isnull;
		loaded.key_id = (std::uint32_t)DatumGetInt64(CatalogValue(0, 1, &isnull));
		strlcpy(loaded.name, CatalogText(0, 2), sizeof(loaded.name));
		Datum v = CatalogValue(0, 3, &isnull);
		loaded.active_version = isnull ? 0 : (std::uint32_t)DatumGetInt32(v);
		loaded.algorithm = ParseAlgorithm(CatalogText(0, 4));
		Datum *elems;
		int nelems;
		deconstruct_array(DatumGetArrayTypeP(CatalogValue(0, 5, &isnull)), INT4OID, 4, true,
						  TYPALIGN_INT, &elems, nullptr, &nelems);
		// A key with more usable versions than this is refused by lookups (KeyLookupVersions).
		loaded.lookup_count = nelems;
		for (int i = 0; i < nelems && i < kMaxLookupVersions; i++)
			loaded.lookup_versions[i] = (std::uint32_t)DatumGetInt32(elems[i]);
		entry = CacheAddKey(loaded);
	}
	CatalogClose(&session);
	lookup_missed = true;
	return entry;
}

// Returns the cached version entry, loading it from the catalog on a miss.
VersionEntry *FindVersion(std::uint32_t key_id, std::uint32_t version)
{
	VersionEntry *entry = CacheFindVersion(key_id, version);
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
	lookup_missed = true;
	instr_time start;
	INSTR_TIME_SET_CURRENT(start);
	PGKM_TOKEN_CALL(material = UnwrapKeyMaterial(v->master_label, v->key_name, v->key_id,
												 v->version, v->algorithm, wrapped, check));
	instr_time elapsed;
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	CacheNoteUnwrap(INSTR_TIME_GET_MILLISEC(elapsed));
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
	if (v->counter == nullptr && v->algorithm == core::Algorithm::Aes256Gcm)
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
	site->serial = v->serial;
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
	if (!dlist_is_empty(&cache_versions_xact) &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		 event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		 event == XACT_EVENT_PREPARE))
		CacheReleaseContexts();
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
	int name_len = VARSIZE_ANY_EXHDR(key_name);
	const char *name = VARDATA_ANY(key_name);
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	VersionEntry *v;
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->name_len == name_len && memcmp(site->name, name, name_len) == 0))
		v = site->version;
	else
	{
		if (name_len == 0 || name_len >= NAMEDATALEN)
			ReportUnknownKeyName(name_len);
		char cname[NAMEDATALEN];
		memcpy(cname, name, name_len);
		cname[name_len] = '\0';
		KeyEntry *key = CacheFindKeyByName(cname);
		if (key == nullptr)
			key = LoadKeyWhere(true, TEXTOID, CStringGetTextDatum(cname));
		if (key == nullptr)
			ReportUnknownKeyName(name_len);
		RequireKeyAlgorithm(key->name, key->algorithm, core::Algorithm::Aes256Gcm, "pgkm_encrypt");
		v = PrepareEncrypt(key, false);
		RememberSite(flinfo, v, name_len, name);
		return CacheReturned(v, lookup_missed);
	}
	CheckRole(v, v->encrypt_role, "encrypt");
	return CacheReturned(v, lookup_missed);
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
	KeyEntry *key = CacheFindKeyByName(cname);
	if (key == nullptr)
		key = LoadKeyWhere(true, TEXTOID, CStringGetTextDatum(cname));
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
	int name_len = VARSIZE_ANY_EXHDR(key_name);
	const char *name = VARDATA_ANY(key_name);
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->name_len == name_len && memcmp(site->name, name, name_len) == 0))
	{
		CheckLookupRole(site->version);
		return CacheReturned(site->version, lookup_missed);
	}
	KeyEntry *key = KeyByName(key_name);
	RequireKeyAlgorithm(key->name, key->algorithm, want, LookupFunction(want));
	VersionEntry *v = PrepareEncrypt(key, true);
	RememberSite(flinfo, v, name_len, name);
	return CacheReturned(v, lookup_missed);
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
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->name_len == kSiteLookup && site->version->key_id == key_id &&
			   site->version->version == version))
	{
		CheckLookupRole(site->version);
		return CacheReturned(site->version, lookup_missed);
	}
	VersionEntry *v = FindVersion(key_id, version);
	if (v == nullptr)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("key version %u of key id %u does not exist", version, key_id)));
	RequireKeyAlgorithm(v->key_name, v->algorithm, want, LookupFunction(want));
	// Retired since the list was read (the worker proved no value uses it): nothing to find.
	if (v->state == VersionState::Retired)
		return nullptr;
	if (!Usable(v))
		RefuseState(v, "look up values");
	CheckLookupRole(v);
	EnsureMaterial(v);
	RememberSite(flinfo, v, kSiteLookup, nullptr);
	return CacheReturned(v, lookup_missed);
}

// Finds a key by its id in the cache or the catalog; raises undefined_object if there is none.
static KeyEntry *KeyById(std::uint32_t key_id)
{
	KeyEntry *key = CacheFindKeyById(key_id);
	if (key == nullptr)
		key = LoadKeyWhere(false, INT8OID, Int64GetDatum(key_id));
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
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->name_len == kSiteById && site->version->key_id == key_id))
	{
		CheckRole(site->version, site->version->encrypt_role, "encrypt");
		return CacheReturned(site->version, lookup_missed);
	}
	VersionEntry *v = PrepareEncrypt(KeyById(key_id), false);
	RememberSite(flinfo, v, kSiteById, nullptr);
	return CacheReturned(v, lookup_missed);
}

VersionEntry *KeyForLookupById(FmgrInfo *flinfo, std::uint32_t key_id, core::Algorithm want)
{
	Validate();
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->name_len == kSiteLookupById && site->version->key_id == key_id))
	{
		CheckLookupRole(site->version);
		return CacheReturned(site->version, lookup_missed);
	}
	KeyEntry *key = KeyById(key_id);
	RequireKeyAlgorithm(key->name, key->algorithm, want, LookupFunction(want));
	VersionEntry *v = PrepareEncrypt(key, true);
	RememberSite(flinfo, v, kSiteLookupById, nullptr);
	return CacheReturned(v, lookup_missed);
}

VersionEntry *KeyForDecrypt(FmgrInfo *flinfo, std::uint32_t key_id, std::uint32_t version)
{
	Validate();
	auto *site = static_cast<CallSiteCache *>(flinfo->fn_extra);
	VersionEntry *v;
	if (likely(site && site->epoch == cache_epoch && site->serial == site->version->serial &&
			   site->version->key_id == key_id && site->version->version == version))
		v = site->version;
	else
	{
		v = FindVersion(key_id, version);
		if (v == nullptr)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
							errmsg("key version %u of key id %u does not exist", version, key_id),
							errdetail("The ciphertext was made under a key that is not in this "
									  "database's pgkm catalog.")));
		if (!Usable(v))
			RefuseState(v, "decrypt");
		CheckRole(v, v->decrypt_role, "decrypt");
		EnsureMaterial(v);
		RememberSite(flinfo, v, kSiteDecrypt, nullptr);
		return CacheReturned(v, lookup_missed);
	}
	CheckRole(v, v->decrypt_role, "decrypt");
	return CacheReturned(v, lookup_missed);
}

VersionEntry *CachedForDecrypt(std::uint32_t key_id, std::uint32_t version)
{
	if (!CacheCurrent(ReadGeneration()))
		return nullptr;
	VersionEntry *v = CacheFindVersion(key_id, version);
	if (v == nullptr || v->material == nullptr || !Usable(v) ||
		!has_privs_of_role(GetUserId(), v->decrypt_role))
		return nullptr;
	return v;
}

const char *CachedKeyName(std::uint32_t key_id, std::uint32_t version)
{
	if (!CacheExists())
		return nullptr;
	if (VersionEntry *v = CacheFindVersion(key_id, version))
		return v->key_name;
	KeyEntry *key = CacheFindKeyById(key_id);
	return key ? key->name : nullptr;
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
