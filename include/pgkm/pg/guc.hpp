// pgkm's settings (GUCs). Defined in one place; read by the other glue files.
#pragma once

namespace pgkm::pg
{

inline constexpr int kKeyCacheTtlDefault = 300; // seconds
inline constexpr int kKeyCacheTtlMin = 1;
inline constexpr int kKeyCacheTtlMax = 86400;
// Cached key versions per backend. At least 2: pgkm_rewrap holds two entries at once.
inline constexpr int kKeyCacheSizeDefault = 1000;
inline constexpr int kKeyCacheSizeMin = 2;
inline constexpr int kKeyCacheSizeMax = 1000000;

inline constexpr int kBatchSizeDefault = 1000;
inline constexpr int kBatchSizeMax = 100000;
inline constexpr int kBatchDelayDefault = 20;          // ms
inline constexpr int kMaxRowsPerSecondDefault = 20000; // 0: unlimited
inline constexpr int kLockTimeoutDefault = 1000;       // ms
inline constexpr int kStatementTimeoutDefault = 60000; // ms
inline constexpr int kNaptimeDefault = 10;             // s

extern char *guc_pkcs11_module;
extern char *guc_pkcs11_token_label;
extern char *guc_pkcs11_pin_file;
extern char *guc_master_key_label;
extern int guc_key_cache_ttl;
extern int guc_key_cache_size;
extern int guc_rotation_batch_size;
extern int guc_rotation_batch_delay;
extern int guc_rotation_max_rows_per_second;
extern int guc_rotation_lock_timeout;
extern int guc_rotation_statement_timeout;
extern int guc_worker_naptime;

// The access audit (issue 4).
enum AuditLevel
{
	kAuditNone,
	kAuditStatement,
	kAuditRow,
};
enum AuditOverflow
{
	kOverflowWait,
	kOverflowDrop,
	kOverflowError,
};
enum AuditDurability
{
	kDurabilityAsync,
	kDurabilitySync,
};
inline constexpr int kAuditRingSizeDefault = 8192; // records
inline constexpr int kMaxCountedVersionsDefault = 16384;

extern int guc_audit_level;
extern int guc_audit_overflow;
extern int guc_audit_durability;
extern bool guc_audit_notice;
extern bool guc_audit_gather;
extern int guc_audit_ring_size;
extern int guc_max_counted_versions;
extern char *guc_audit_file;
extern int guc_audit_retention;           // s; 0 keeps everything
extern int guc_audit_partition_interval;  // s
extern int guc_audit_checkpoint_interval; // s
extern int guc_audit_checkpoint_records;
extern char *guc_audit_key_label;

// Redaction of bind parameters from the server log (redact.cpp).
enum RedactParameters
{
	kRedactOff,
	kRedactOn,  // statements known to use pgkm's functions
	kRedactAll, // every statement
};
extern int guc_redact_parameters;

// Defines every pgkm.* setting and reserves the prefix.
void GucInit();

} // namespace pgkm::pg
