// Integration test fixture: a throwaway PostgreSQL 15 cluster with a SoftHSM2 token in a
// fresh temporary directory, run as the postgres OS user when the tests run as root, and
// libpq connections to it. Mirrors test/lib/cluster.sh.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgkm::it
{

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Prints one progress line to stderr ("[ pgkm-it ] ...").
void Note(const std::string &line);

// Polls pred every interval until it returns true or timeout passes; returns its last value.
bool WaitUntil(const std::function<bool()> &pred, std::chrono::milliseconds timeout,
			   std::chrono::milliseconds interval = 100ms);

// A failed statement, with its SQLSTATE ("" when the connection broke without one).
class PgError : public std::runtime_error
{
  public:
	PgError(const std::string &message, std::string sqlstate)
		: std::runtime_error(message), sqlstate_(std::move(sqlstate))
	{
	}
	const std::string &sqlstate() const { return sqlstate_; }

  private:
	std::string sqlstate_;
};

// Owns one PGresult.
class Result
{
  public:
	explicit Result(PGresult *res) : res_(res) {}
	Result(Result &&other) noexcept : res_(other.res_) { other.res_ = nullptr; }
	Result &operator=(Result &&other) noexcept;
	Result(const Result &) = delete;
	Result &operator=(const Result &) = delete;
	~Result();

	// The statement succeeded (command or rows).
	bool ok() const;
	// SQLSTATE of a failure (PG_DIAG_SQLSTATE), "" on success or a broken connection.
	std::string sqlstate() const;
	// Error message of a failure, "" on success.
	std::string message() const;
	int rows() const;
	int cols() const;
	// Rows affected by INSERT/UPDATE/DELETE.
	long affected() const;
	// Value as text; "" for NULL (check IsNull).
	std::string get(int row, int col) const;
	long long getInt(int row, int col) const;
	bool isNull(int row, int col) const;

  private:
	PGresult *res_;
};

// Parameters of a statement, all passed as text ($1, $2, ...).
using Params = std::vector<std::string>;

// One libpq connection (closed by the destructor).
class Connection
{
  public:
	// Connects; throws PgError on failure.
	explicit Connection(const std::string &conninfo);
	Connection(Connection &&other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }
	Connection &operator=(Connection &&other) noexcept;
	Connection(const Connection &) = delete;
	Connection &operator=(const Connection &) = delete;
	~Connection();

	// Runs a statement; never throws for SQL errors: check Result::ok().
	Result query(const std::string &sql, const Params &params = {});
	// Runs a statement; throws PgError (with its SQLSTATE) unless it succeeds.
	Result exec(const std::string &sql, const Params &params = {});
	// First column of the first row as text; throws if there is no row or the value is NULL.
	std::string value(const std::string &sql, const Params &params = {});
	// Same, as an integer.
	long long intValue(const std::string &sql, const Params &params = {});
	// First column of the first row, std::nullopt for NULL or no row.
	std::optional<std::string> valueOrNull(const std::string &sql, const Params &params = {});
	// Polls a query until it returns true ('t'); false after timeout. SQL errors throw.
	bool waitFor(const std::string &predicate, std::chrono::milliseconds timeout,
				 const Params &params = {}, std::chrono::milliseconds interval = 100ms);
	// Backend pid of this connection.
	int backendPid() const;
	bool alive() const;
	PGconn *raw() { return conn_; }

  private:
	PGconn *conn_;
};

// A throwaway cluster and SoftHSM2 token. The constructor creates the directory, token,
// PIN file and cluster (initdb) but does not start the server; the destructor stops the
// server and removes everything (PGKM_KEEP=1 keeps the directory).
class Cluster
{
  public:
	// Runs argv as the server's OS user from /, with SOFTHSM2_CONF set; returns the exit
	// status and fills output (stdout + stderr). Kills it after timeout.
	int runAsServerUser(const std::vector<std::string> &argv, std::string *output = nullptr,
						std::chrono::seconds timeout = 120s) const;
	// The path of a PostgreSQL program among the binaries clusters run (PGKM_PG_BINDIR).
	static std::string pgBin(const std::string &name);
	// extra_settings: lines appended to postgresql.conf after the standard ones.
	explicit Cluster(std::vector<std::string> extra_settings = {});
	// A streaming-replication standby of a running primary: a base backup of it
	// (pg_basebackup -R -X stream, so standby.signal and primary_conninfo are set) in a fresh
	// directory, with its own socket directory and port and the primary's settings. It shares
	// the primary's SoftHSM2 token, PIN file and SOFTHSM2_CONF, so the primary object must
	// outlive it (declare it after the primary). Not started; the destructor stops and
	// removes it like any cluster.
	static Cluster standbyOf(const Cluster &primary);
	// A fresh, independent cluster (its own initdb) that uses another cluster's SoftHSM2
	// token, PIN file and SOFTHSM2_CONF, e.g. a logical-replication subscriber with the same
	// master key. The other cluster object must outlive it. Not started.
	static Cluster sharingTokenOf(const Cluster &other,
								  std::vector<std::string> extra_settings = {});
	Cluster(const Cluster &) = delete;
	Cluster &operator=(const Cluster &) = delete;
	~Cluster();

	// pg_ctl start -w; throws (with the server log) if the server does not come up.
	void start();
	// pg_ctl stop -m fast.
	void stop();
	// pg_ctl stop -m immediate (no shutdown checkpoint: crash recovery at the next start).
	void stopImmediate();
	void restart();
	// Appends a line to postgresql.conf (takes effect at reload or restart).
	void appendConf(const std::string &line);
	// Sends SIGKILL to a server process (a backend, a worker or the postmaster).
	void kill9(int pid);
	// Waits until a new connection runs a query (after start-up or crash recovery).
	void waitReady(std::chrono::milliseconds timeout = 60s, const std::string &db = "postgres");

	Connection connect(const std::string &db = "postgres") const;
	std::string conninfo(const std::string &db = "postgres") const;
	const std::string &dir() const { return dir_; }
	const std::string &dataDir() const { return data_; }
	// Postmaster pid from postmaster.pid, 0 if not running.
	int postmasterPid() const;
	// Whole server log.
	std::string serverLog() const;
	// The last lines of the server log.
	std::string serverLogTail(int lines = 40) const;
	// The token's SoftHSM2 configuration file, PIN file, module and label.
	const std::string &softhsmConf() const { return conf_; }
	const std::string &pinFile() const { return pin_file_; }
	static const char *softhsmModule();
	static const char *tokenLabel();
	// Keeps the server log out of the test output on failure (it may hold test secrets).
	void quietOnFailure() { quiet_ = true; }

  private:
	struct StandbyTag
	{
	};
	Cluster(const Cluster &primary, StandbyTag);
	struct TokenTag
	{
	};
	Cluster(const Cluster &other, std::vector<std::string> extra_settings, TokenTag);
	// Runs initdb into data_ and writes postgresql.conf (token settings from conf_/pin_file_).
	void initCluster(const std::vector<std::string> &extra_settings);
	// Creates and registers dir_ (mkdtemp), owned by the server's OS user.
	void createDir();
	void chownToServer(const std::string &path) const;
	void pgCtlStop(const std::string &mode);
	void registerPostmaster();

	std::string dir_;
	std::string data_;
	std::string conf_;
	std::string pin_file_;
	int port_ = 54329;
	int slot_ = -1; // index in the SIGINT cleanup registry
	bool quiet_ = false;
};

} // namespace pgkm::it
