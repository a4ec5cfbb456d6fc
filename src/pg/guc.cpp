// pgkm's settings: the PKCS#11 token, the master key label, the key cache's lifetime and size.
#include "pgkm/pg/guc.hpp"

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

char *guc_pkcs11_module = nullptr;
char *guc_pkcs11_token_label = nullptr;
char *guc_pkcs11_pin_file = nullptr;
char *guc_master_key_label = nullptr;
int guc_key_cache_ttl = kKeyCacheTtlDefault;
int guc_key_cache_size = kKeyCacheSizeDefault;
int guc_rotation_batch_size = kBatchSizeDefault;
int guc_rotation_batch_delay = kBatchDelayDefault;
int guc_rotation_max_rows_per_second = kMaxRowsPerSecondDefault;
int guc_rotation_lock_timeout = kLockTimeoutDefault;
int guc_rotation_statement_timeout = kStatementTimeoutDefault;
int guc_worker_naptime = kNaptimeDefault;
int guc_audit_level = kAuditStatement;
int guc_audit_overflow = kOverflowWait;
int guc_audit_durability = kDurabilityAsync;
bool guc_audit_notice = false;
bool guc_audit_gather = true;
int guc_audit_ring_size = kAuditRingSizeDefault;
int guc_max_counted_versions = kMaxCountedVersionsDefault;
char *guc_audit_file = nullptr;
int guc_audit_retention = 0;
int guc_audit_partition_interval = 86400;
int guc_audit_checkpoint_interval = 60;
int guc_audit_checkpoint_records = 10000;
char *guc_audit_key_label = nullptr;
int guc_redact_parameters = kRedactOn;

namespace
{

// Accepts a master key base label of 1..48 printable ASCII characters.
bool CheckMasterKeyLabel(char **newval, void **, GucSource)
{
	const char *label = *newval;
	size_t len = label ? strlen(label) : 0;
	if (len == 0 || len > 48)
	{
		GUC_check_errdetail("The label must have 1 to 48 characters.");
		return false;
	}
	for (size_t i = 0; i < len; i++)
	{
		if (label[i] < 0x21 || label[i] > 0x7e)
		{
			GUC_check_errdetail("The label may contain only printable ASCII without spaces.");
			return false;
		}
	}
	return true;
}

const struct config_enum_entry audit_levels[] = {
	{"none", kAuditNone, false},
	{"statement", kAuditStatement, false},
	{"row", kAuditRow, false},
	{nullptr, 0, false},
};
const struct config_enum_entry audit_overflows[] = {
	{"wait", kOverflowWait, false},
	{"drop", kOverflowDrop, false},
	{"error", kOverflowError, false},
	{nullptr, 0, false},
};
const struct config_enum_entry audit_durabilities[] = {
	{"async", kDurabilityAsync, false},
	{"sync", kDurabilitySync, false},
	{nullptr, 0, false},
};

const struct config_enum_entry redact_modes[] = {
	{"off", kRedactOff, false}, {"on", kRedactOn, false},    {"all", kRedactAll, false},
	{"true", kRedactOn, true},  {"false", kRedactOff, true}, {"yes", kRedactOn, true},
	{"no", kRedactOff, true},   {"1", kRedactOn, true},      {"0", kRedactOff, true},
	{nullptr, 0, false},
};

// Defines the settings of the access audit.
void DefineAuditSettings()
{
	DefineCustomEnumVariable(
		"pgkm.audit_level", "What the access audit records: none, statement or row.",
		"statement: one record per statement, key and version, with a count; row: one record "
		"per use. Key administration is recorded at every level.",
		&guc_audit_level, kAuditStatement, audit_levels, PGC_SUSET, 0, nullptr, nullptr, nullptr);
	DefineCustomEnumVariable(
		"pgkm.audit_overflow", "What a backend does when the audit ring is full.",
		"wait: until the worker makes room; drop: lose the record and count it in a gap "
		"record; error: fail the operation (fail closed).",
		&guc_audit_overflow, kOverflowWait, audit_overflows, PGC_SUSET, 0, nullptr, nullptr,
		nullptr);
	DefineCustomEnumVariable(
		"pgkm.audit_durability", "Whether a decrypt waits until its access record is durable.",
		"sync: plaintext is returned only after the statement's access record is committed.",
		&guc_audit_durability, kDurabilityAsync, audit_durabilities, PGC_SUSET, 0, nullptr, nullptr,
		nullptr);
	DefineCustomBoolVariable(
		"pgkm.audit_gather",
		"Gathers a session's repeated uses of a statement into one record with a count.",
		"Off: one record per statement execution (statement level) or per use (row level), "
		"at a higher cost per statement.",
		&guc_audit_gather, true, PGC_SUSET, 0, nullptr, nullptr, nullptr);
	DefineCustomBoolVariable("pgkm.audit_notice",
							 "Mirrors every audit record this session produces as a NOTICE.",
							 "For regression tests: only deterministic fields are shown.",
							 &guc_audit_notice, false, PGC_SUSET, 0, nullptr, nullptr, nullptr);
	// A postmaster-only setting can be defined only while the server starts; loaded later,
	// pgkm has no ring anyway.
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable(
			"pgkm.audit_ring_size", "Audit records the shared ring holds before overflow applies.",
			"Records in the ring are lost if the server crashes (async).", &guc_audit_ring_size,
			kAuditRingSizeDefault, 64, 1048576, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable(
			"pgkm.max_counted_versions",
			"AES-GCM key versions whose encryptions shared memory counts at once.",
			"About 64 bytes each. Counters of retired versions are freed when counts are flushed.",
			&guc_max_counted_versions, kMaxCountedVersionsDefault, 64, 10000000, PGC_POSTMASTER, 0,
			nullptr, nullptr, nullptr);
	DefineCustomStringVariable(
		"pgkm.audit_file",
		"JSON-lines file that receives audit records on a hot standby, besides the server log.",
		nullptr, &guc_audit_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomIntVariable(
		"pgkm.audit_retention", "How long pgkm.audit_log keeps records (0: forever).",
		"Whole partitions are dropped once all their records are older.", &guc_audit_retention, 0,
		0, INT_MAX, PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.audit_partition_interval",
							"Time span of one partition of pgkm.audit_log.", nullptr,
							&guc_audit_partition_interval, 86400, 1, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.audit_checkpoint_interval",
							"How often the worker seals the audit chain with the token's key.",
							nullptr, &guc_audit_checkpoint_interval, 60, 1, 86400, PGC_SIGHUP,
							GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.audit_checkpoint_records",
							"Records after which the worker seals the audit chain at once.",
							nullptr, &guc_audit_checkpoint_records, 10000, 1, INT_MAX, PGC_SIGHUP,
							0, nullptr, nullptr, nullptr);
	DefineCustomStringVariable(
		"pgkm.audit_key_label",
		"Label of the HMAC key in the token that seals the audit chain; created on first use.",
		nullptr, &guc_audit_key_label, "pgkm-audit", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
		CheckMasterKeyLabel, nullptr, nullptr);
}

} // namespace

void GucInit()
{
	DefineCustomStringVariable(
		"pgkm.pkcs11_module", "Path of the PKCS#11 module (.so) holding the master key.", nullptr,
		&guc_pkcs11_module, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomStringVariable(
		"pgkm.pkcs11_token_label", "Label of the PKCS#11 token holding the master key.", nullptr,
		&guc_pkcs11_token_label, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr, nullptr);
	DefineCustomStringVariable(
		"pgkm.pkcs11_pin_file",
		"File holding the token's user PIN; must be mode 0600 and owned by the server user.",
		nullptr, &guc_pkcs11_pin_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY, nullptr, nullptr,
		nullptr);
	DefineCustomStringVariable(
		"pgkm.master_key_label",
		"Base label of the master keys in the token; versions are <label>.v1, <label>.v2, ...",
		nullptr, &guc_master_key_label, "pgkm-master", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
		CheckMasterKeyLabel, nullptr, nullptr);
	DefineCustomIntVariable(
		"pgkm.key_cache_ttl",
		"How long a backend may keep unwrapped keys without re-reading the catalog.",
		"Rotation and role changes through pgkm's functions take effect at once "
		"regardless; this bounds what changes by other means.",
		&guc_key_cache_ttl, kKeyCacheTtlDefault, kKeyCacheTtlMin, kKeyCacheTtlMax, PGC_SIGHUP,
		GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineCustomIntVariable(
		"pgkm.key_cache_size", "Key versions a backend keeps unwrapped at most.",
		"The least recently used version is evicted (its key wiped) beyond this; a lower value "
		"takes effect at the backend's next use of the cache.",
		&guc_key_cache_size, kKeyCacheSizeDefault, kKeyCacheSizeMin, kKeyCacheSizeMax, PGC_SUSET, 0,
		nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.rotation_batch_size",
							"Rows the worker re-encrypts in one short transaction.", nullptr,
							&guc_rotation_batch_size, kBatchSizeDefault, 1, kBatchSizeMax,
							PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.rotation_batch_delay",
							"Pause of the worker between two re-encryption batches.", nullptr,
							&guc_rotation_batch_delay, kBatchDelayDefault, 0, 60000, PGC_SIGHUP,
							GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.rotation_max_rows_per_second",
							"Cap on the rows the worker re-encrypts per second (0: no cap).",
							nullptr, &guc_rotation_max_rows_per_second, kMaxRowsPerSecondDefault, 0,
							100000000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.rotation_lock_timeout",
							"lock_timeout of each re-encryption batch (0: none).", nullptr,
							&guc_rotation_lock_timeout, kLockTimeoutDefault, 0, 600000, PGC_SIGHUP,
							GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.rotation_statement_timeout",
							"statement_timeout of each re-encryption batch (0: none).", nullptr,
							&guc_rotation_statement_timeout, kStatementTimeoutDefault, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr, nullptr);
	DefineCustomIntVariable("pgkm.worker_naptime",
							"How often an idle worker flushes counters and applies rotation "
							"policies.",
							nullptr, &guc_worker_naptime, kNaptimeDefault, 1, 3600, PGC_SIGHUP,
							GUC_UNIT_S, nullptr, nullptr, nullptr);
	DefineAuditSettings();
	DefineCustomEnumVariable(
		"pgkm.redact_parameters",
		"Removes bind parameters from log lines and error contexts of statements using pgkm.",
		"on: statements that call pgkm's functions (directly, through views, or seen calling "
		"its data path before); all: every statement; off: none.",
		&guc_redact_parameters, kRedactOn, redact_modes, PGC_SUSET, 0, nullptr, nullptr, nullptr);
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("pgkm");
#else
	EmitWarningsOnPlaceholders("pgkm");
#endif
}

} // namespace pgkm::pg
