// Module entry: _PG_init reads like a table of contents of pgkm's subsystems.
#include "pgkm/pg/audit.hpp"
#include "pgkm/pg/boundary.hpp"
#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/redact.hpp"
#include "pgkm/pg/shmem.hpp"
#include "pgkm/pg/token.hpp"
#include "pgkm/pg/verify.hpp"
#include "pgkm/pg/worker.hpp"

#include "pgkm/pg/postgres.hpp"

extern "C"
{
	PG_MODULE_MAGIC;
	void _PG_init(void);
}

namespace
{

// Refuses to start the server with a PIN file that others can read (DESIGN.md).
void CheckPinFileAtStartup()
{
	const char *path = pgkm::pg::guc_pkcs11_pin_file;
	if (path == nullptr || path[0] == '\0')
		return;
	PGKM_CORE(pgkm::pg::CheckPinFile(path));
}

} // namespace

// Defines the settings; under shared_preload_libraries also reserves shared memory.
// Loaded any other way, the data path raises a clear error instead of working half-way.
void _PG_init(void)
{
	pgkm::pg::GucInit();
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (IsBinaryUpgrade)
		return;
	pgkm::pg::ShmemInit();
	pgkm::pg::WorkerInit();
	pgkm::pg::AuditInit();
	pgkm::pg::RedactInit();
	pgkm::pg::VerifyInit();
	CheckPinFileAtStartup();
}
