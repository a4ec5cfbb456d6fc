// Building blocks of key administration shared by the SQL functions and the worker. Each
// runs inside an open catalog session (CatalogOpen) and may raise errors.
#pragma once

#include "pgkm/pg/token.hpp"

#include "pgkm/pg/catalog.hpp"

namespace pgkm::pg
{

// The master key new DEKs are wrapped under.
struct MasterKeyRow
{
	int32 id;
	char label[kMaxLabel];
};

// A new DEK version, wrapped, with the master key that wrapped it.
struct NewVersion
{
	int32 master_key_id;
	WrappedDek dek;
};

// Returns the active master key, finding or generating one in the token the first time.
MasterKeyRow ActiveMasterKey(const char *caller_name);

// Makes and wraps a new DEK for (key_id, version). Called before any catalog write of the
// operation, so a token failure leaves nothing to roll back.
NewVersion WrapNewVersion(int64 key_id, int32 version, const char *caller_name);

// Inserts a wrapped DEK as the active version of a key.
void StoreVersion(int64 key_id, int32 version, const NewVersion &v, const char *caller_name);

// Locks a key's row and returns its id and owner; raises undefined_object if absent.
int64 LockKey(const char *name, Oid *owner);

// Raises insufficient_privilege unless caller is a superuser or has the owner's privileges.
void CheckKeyOwner(Oid caller, Oid owner, const char *name);

// Opens a catalog session with the named key's row locked, after checking that the caller
// is its owner (or has the owner's privileges, or is a superuser). Returns the key id.
int64 OpenOwnedKey(const char *name, CatalogSession *session);

// Adds a version to a key: wraps a new DEK, demotes the active version to decrypt_only,
// stores the new one active, records the event and queues re-encryption jobs for the
// key's protected columns. The key row must be locked (LockKey). Returns the new version.
int32 RotateKeyLocked(int64 key_id, const char *key_name, const char *actor, const char *why);

// Queues a re-encryption job to target_version for each protected column of the key
// (replacing open jobs of older targets) and wakes the database's worker.
void QueueReencryption(int64 key_id, int32 target_version, const char *actor);

// Adds the shared-memory encryption counts of this database to pgkm.key_versions; shared
// memory forgets them only if the transaction commits. Returns the total added.
int64 FlushEncryptionCounts();

// Locks pgkm.master_keys against other master-key changes (until commit) and returns the
// id and state of the master key labelled label; 42704 if there is none.
int32 LockMasterKey(const char *label, char **state);
// Locks pgkm.key_versions against writers until commit and raises
// object_not_in_prerequisite_state if any key version is still wrapped under the master key
// (pgkm.retire_master_key, pgkm.destroy_master_key).
void RequireNothingWrappedUnder(int32 master_key_id, const char *label);

// Finds a table's single-column primary key: its name (quoted) and type (format_type), in
// memory of the current context. False if the table has none, or a composite one.
bool SingleColumnPrimaryKey(Oid relid, char **quoted_name, char **type);

// Raises undefined_object: the column of the table is not protected.
[[noreturn]] void ReportNotProtected(Oid relid, const char *column);

// A protected column whose table still exists.
struct ProtectedColumn
{
	Oid relid;
	char *table;  // regclass text: quoted, and qualified under the pinned search_path
	char *column; // unquoted
};

// Lists the protected columns of a key (tables that were dropped are left out).
ProtectedColumn *ProtectedColumnsOf(int64 key_id, uint64 *count);

// Counts the rows of a protected column holding a value under (key_id, version); with
// exists_only, stops at the first one (returns 0 or 1). The scan that proves a version
// unused, for retirement and destruction alike. Runs as the table's owner (OwnerOpen).
int64 RowsUnderVersion(const ProtectedColumn *pc, int64 key_id, int32 version, bool exists_only);

// Raises an error unless the protected column still exists and holds bytea (or a domain
// over it): statements on it then call nothing but pg_catalog's bytea functions.
void RequireByteaColumn(Oid relid, const char *column);

// A header field (key id or version) as the ciphertext stores it: 4 bytes, big-endian.
Datum HeaderFieldDatum(std::uint32_t value);

// The SQL condition "the bytea expression holds a ciphertext header whose key id equals
// parameter $key_param and whose version compares with parameter $version_param by the
// pg_catalog operator op"; both parameters are HeaderFieldDatum values. It reads the header
// bytes with pg_catalog functions only, so it needs no privilege on schema pgkm: the
// statements that use it run as the table's owner.
char *HeaderPredicate(const char *expr, int key_param, const char *op, int version_param);

// Records who did what to which key (pgkm.key_events). key_id/version 0 mean none.
void RecordKeyEvent(const char *actor, const char *action, int64 key_id, int32 version,
					const char *detail);

} // namespace pgkm::pg
