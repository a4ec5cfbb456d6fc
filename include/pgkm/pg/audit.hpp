// The access audit, producer side: what the data path, the administration functions and the
// executor hooks record, and how (ring to the worker, or the server log on a standby).
#pragma once

#include <cstdint>

#include "pgkm/pg/key_cache.hpp"
#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

// A data-path operation.
enum class AuditOp : std::uint8_t
{
	Encrypt,
	Decrypt,
	Rewrap,
	EncryptDeterministic, // pgkm_encrypt_det, pgkm_encrypt_det_all
	BlindIndex,           // pgkm_blind_index, pgkm_blind_index_all
};

// What a data-path call knows about its key when it succeeds or fails.
struct AuditTarget
{
	const char *key_name;      // nullptr if not known
	std::uint32_t key_id;      // 0 if not known
	std::uint32_t key_version; // 0 if not known
	const std::uint8_t *nonce; // the ciphertext's 12-byte nonce, or nullptr
};

// Installs the executor hooks and callbacks; called from _PG_init under
// shared_preload_libraries.
void AuditInit();

// Records one successful use of a key version (aggregated per statement at statement
// level). May wait (sync durability, full ring) or raise an error (audit_overflow = error):
// call it before handing plaintext back.
void AuditUse(AuditOp op, const VersionEntry *v, const std::uint8_t *nonce);

// Records a data-path call that is failing with the current error (call it in PG_CATCH,
// before PG_RE_THROW). Never waits and never raises.
void AuditFailure(AuditOp op, const AuditTarget &target);

// What the data-path call in progress knows of its key, for AuditFailDataPath. Data-path
// calls do not nest, so one per process suffices; each call resets it first.
extern AuditTarget audit_failing;

// AuditFailure with audit_failing, completing the key name from the key cache.
void AuditFailDataPath(AuditOp op);

// Records a key administration action, as success when the transaction commits and as
// failed ("rolled back") when it aborts. key_name may be nullptr.
void AuditAdmin(const char *action, const char *key_name, std::int32_t version, const char *detail);

// Records a refused administration action at once (it is about to raise 42501).
void AuditAdminDenied(const char *action, const char *key_name, const char *message);

// Turns off access records for this process (the worker: its re-encryption is not an
// access). Key administration is still recorded.
void AuditSuppressAccess();

// Marks this process as the audit writer (the worker, while it inserts into
// pgkm.audit_log); the append-only guard lets only the writer insert.
void AuditSetWriter(bool writing);
bool AuditIsWriter();

// The operation's name as recorded ("encrypt", ...).
const char *AuditOpName(AuditOp op);

} // namespace pgkm::pg
