// TokenFaults: every fault of the PKCS#11 token in turn, on one running cluster: the module
// path wrong, a library that is not a PKCS#11 module (a real .so and a non-ELF file), the
// token absent, a wrong PIN, a PIN file others can read, the PIN file missing, the token
// removed while sessions are open (its SoftHSM2 directory moved away), and the master key
// deleted from the token. For each: the error (SQLSTATE, message, detail with the CKR_* name
// or the precise cause, hint), no crash, what keeps working without the token, the worker
// neither dying nor spinning, the key cache rule, and recovery without a restart once the
// fault is repaired. KeyCacheTtl checks the cache rule's expiry with a short TTL.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <pwd.h>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace pgkm::it
{

namespace
{

namespace fs = std::filesystem;

constexpr int kNaptime = 2;          // pgkm.worker_naptime of the test cluster (s)
constexpr int kRows = 20;            // rows of each table
constexpr auto kWindow = 3 * 2000ms; // how long the worker is watched during a fault
// Worker log lines allowed in kWindow: per naptime, a failing checkpoint logs three lines
// (message, DETAIL, HINT) and a re-encryption batch two, each tried at most about twice.
// Retrying on the audit drain's 20 ms cadence would log hundreds.
constexpr std::size_t kMaxWorkerLines = (3 + 1) * 10;

// What a statement returned: success, or the error's fields.
struct Outcome
{
	bool ok = false;
	std::string sqlstate, message, detail, hint;
};

// What a fault's error must look like; every field is a substring to find.
struct Expected
{
	std::string sqlstate, message, detail, hint;
};

// Runs sql and returns its outcome with the error's fields (Result hides DETAIL and HINT).
Outcome Try(Connection &c, const std::string &sql)
{
	PGresult *res = PQexec(c.raw(), sql.c_str());
	Outcome o;
	const auto field = [&](int code)
	{
		const char *v = res ? PQresultErrorField(res, code) : nullptr;
		return std::string(v ? v : "");
	};
	const ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	o.ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
	o.sqlstate = field(PG_DIAG_SQLSTATE);
	o.message = field(PG_DIAG_MESSAGE_PRIMARY);
	o.detail = field(PG_DIAG_MESSAGE_DETAIL);
	o.hint = field(PG_DIAG_MESSAGE_HINT);
	if (res)
		PQclear(res);
	return o;
}

// Formats an outcome for failure messages.
std::string Show(const Outcome &o)
{
	if (o.ok)
		return "(succeeded)";
	return o.sqlstate + " | " + o.message + " | DETAIL: " + o.detail + " | HINT: " + o.hint;
}

// Reads a whole file ("" if it cannot be read).
std::string Slurp(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

// Overwrites an existing file's contents in place (owner and mode stay as they are).
void Overwrite(const std::string &path, const std::string &contents)
{
	const int fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
	ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
	ASSERT_EQ(write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
	close(fd);
}

// Runs argv (as the server's OS user when we are root, with the cluster's SOFTHSM2_CONF);
// returns its exit status. Its output is discarded: it may echo what it was given.
int RunTool(const Cluster &cluster, std::vector<std::string> argv, bool as_server = true)
{
	std::vector<std::string> full;
	if (as_server && getuid() == 0)
		full = {"runuser", "-u", "postgres", "--"};
	full.push_back("env");
	full.push_back("SOFTHSM2_CONF=" + cluster.dir() + "/softhsm2.conf");
	full.insert(full.end(), argv.begin(), argv.end());
	const pid_t pid = fork();
	if (pid == 0)
	{
		const int null_fd = open("/dev/null", O_RDWR);
		dup2(null_fd, 0);
		dup2(null_fd, 1);
		dup2(null_fd, 2);
		if (chdir("/") != 0)
			_exit(126);
		std::vector<char *> args;
		for (auto &a : full)
			args.push_back(a.data());
		args.push_back(nullptr);
		execvp(args[0], args.data());
		_exit(127);
	}
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
	{
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// User and system CPU time of a process, in clock ticks.
long long CpuTicks(int pid)
{
	std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
	const std::size_t paren = stat.rfind(')');
	if (paren == std::string::npos)
		return -1;
	std::istringstream fields(stat.substr(paren + 2));
	std::string f;
	long long utime = 0, stime = 0;
	for (int i = 3; fields >> f; ++i) // field 3 is the state
	{
		if (i == 14)
			utime = std::stoll(f);
		if (i == 15)
		{
			stime = std::stoll(f);
			break;
		}
	}
	return utime + stime;
}

// Counts the log lines of one process in text.
std::size_t LinesOf(const std::string &text, int pid)
{
	const std::string tag = " [" + std::to_string(pid) + "] ";
	std::size_t n = 0;
	for (std::size_t at = text.find(tag); at != std::string::npos; at = text.find(tag, at + 1))
		++n;
	return n;
}

// The first existing path of the candidates, or "".
std::string FirstExisting(const std::vector<std::string> &candidates)
{
	for (const auto &c : candidates)
		if (access(c.c_str(), R_OK) == 0)
			return c;
	return "";
}

// How a fault behaves beyond its error.
struct Fault
{
	std::string name;
	Expected error;
	// A backend that logged in before the fault keeps its token session (PIN file faults:
	// the PIN is read at login only), so it can still unwrap keys it never used.
	bool logged_in_keeps_token = false;
	// The worker (logged in, settings unchanged) still seals the audit log.
	bool worker_keeps_token = false;
	// A new session still reaches the token for what does not need the lost object (the
	// audit MAC key, when only the master key is gone).
	bool new_session_reaches_token = false;
	// More the warm session's error detail says: what the call on its stale session got.
	std::string warm_detail;
	std::function<void()> inject, repair;
	std::function<void()> during, after; // optional extra checks
};

} // namespace

class TokenFaults : public ::testing::Test
{
  protected:
	static void SetUpTestSuite()
	{
		cluster_ = std::make_unique<Cluster>(std::vector<std::string>{
			"pgkm.worker_naptime = " + std::to_string(kNaptime),
			"pgkm.key_cache_ttl = '1h'",          // the TTL test sets its own
			"pgkm.audit_checkpoint_interval = 1", // a checkpoint (token MAC) is always due
			"pgkm.rotation_batch_size = 5",
		});
		cluster_->start();
		pin_file_content_ = Slurp(cluster_->dir() + "/pin");
		pin_ = pin_file_content_.substr(0, pin_file_content_.find('\n'));
		ASSERT_GE(pin_.size(), 8u) << "no PIN in the cluster's PIN file";
		Connection db = cluster_->connect();
		db.exec("CREATE EXTENSION pgkm");
		for (const char *key : {"k1", "k2", "k3"})
			db.exec("SELECT pgkm.create_key($1)", {key});
		for (const char *table : {"t1", "t2", "t3"})
		{
			const std::string key = std::string("k") + (table + 1);
			db.exec(std::string("CREATE TABLE ") + table + " (id int PRIMARY KEY, v bytea)");
			db.exec(std::string("INSERT INTO ") + table + " SELECT g, pgkm_encrypt(" +
						SecretSql("g", "0") + ", $1, g::text) FROM generate_series(1, $2) g",
					{key, std::to_string(kRows)});
		}
		db.exec("SELECT pgkm.protect_column('t3', 'v', 'k3', 'id')");
		ASSERT_NE(WaitForWorker(db, 30s), 0) << "no pgkm worker";
		bystander_ = std::make_unique<Connection>(cluster_->connect());
		bystander_pid_ = bystander_->backendPid();
		postmaster_pid_ = cluster_->postmasterPid();
		worker_pid_ = WorkerPid(db);
		ASSERT_TRUE(db.waitFor("SELECT checkpoints > 0 FROM pgkm.verify_audit_log()", 30s))
			<< "the worker wrote no checkpoint";
	}

	static void TearDownTestSuite()
	{
		if (cluster_ && !pin_.empty())
		{
			EXPECT_EQ(cluster_->serverLog().find(pin_), std::string::npos)
				<< "the token PIN appeared in the server log";
		}
		bystander_.reset();
		cluster_.reset();
	}

	// Waits until a setting has this value in a new session.
	static void WaitForSetting(const std::string &name, const std::string &value)
	{
		Connection c = cluster_->connect();
		c.exec("SELECT pg_reload_conf()");
		const auto seen = [&](Connection &conn)
		{ return conn.value("SELECT current_setting($1)", {name}) == value; };
		const auto seen_new = [&]
		{
			Connection fresh = cluster_->connect();
			return seen(fresh);
		};
		ASSERT_TRUE(WaitUntil(seen_new, 30s)) << name << " never became " << value;
	}

  public:
	// Sets a token setting with ALTER SYSTEM (empty value: RESET, back to default_value) and
	// waits until new sessions see it. Open sessions apply it before their next statement.
	static void SetToken(const std::string &name, const std::string &value,
						 const std::string &default_value)
	{
		Connection c = cluster_->connect();
		if (value.empty())
			c.exec("ALTER SYSTEM RESET " + name);
		else
			c.exec("ALTER SYSTEM SET " + name + " = '" + value + "'");
		WaitForSetting(name, value.empty() ? default_value : value);
	}

  protected:
	// The SoftHSM2 directory of the cluster's one token.
	static std::string TokenDir()
	{
		std::vector<std::string> dirs;
		for (const auto &e : fs::directory_iterator(cluster_->dir() + "/tokens"))
			dirs.push_back(e.path().string());
		if (dirs.size() != 1)
			throw std::runtime_error("expected one token directory");
		return dirs.front();
	}

	// Checks an error against what the fault must give, and that it carries no secret.
	static void CheckError(const Outcome &o, const Expected &e, const std::string &where)
	{
		SCOPED_TRACE(where);
		ASSERT_FALSE(o.ok) << "succeeded although the token is unusable";
		EXPECT_EQ(o.sqlstate, e.sqlstate) << Show(o);
		EXPECT_NE(o.message.find(e.message), std::string::npos) << Show(o);
		EXPECT_NE(o.detail.find(e.detail), std::string::npos) << Show(o);
		EXPECT_FALSE(o.hint.empty()) << Show(o);
		EXPECT_NE(o.hint.find(e.hint), std::string::npos) << Show(o);
		for (const std::string *text : {&o.message, &o.detail, &o.hint})
			EXPECT_EQ(text->find(pin_), std::string::npos) << "the PIN is in the error";
	}

	// Decrypts row id of a table, in the statement form the tests use.
	static std::string DecryptRow(const std::string &table, int id)
	{
		return "SELECT pgkm_decrypt_text(v, id::text) FROM " + table +
			   " WHERE id = " + std::to_string(id);
	}

	// Expects a statement to return one value.
	static void ExpectValue(Connection &c, const std::string &sql, const std::string &want,
							const std::string &where)
	{
		Result r = c.query(sql);
		EXPECT_TRUE(r.ok()) << where << ": " << r.message();
		if (r.ok() && r.rows() == 1)
		{
			EXPECT_EQ(r.get(0, 0), want) << where;
		}
	}

	// Runs one fault through every check; see the file comment.
	static void Exercise(const Fault &fault);

	static std::unique_ptr<Cluster> cluster_;
	static std::unique_ptr<Connection> bystander_;
	static std::string pin_;              // the token's user PIN
	static std::string pin_file_content_; // the PIN file as the cluster wrote it
	static int bystander_pid_, postmaster_pid_, worker_pid_;
};

std::unique_ptr<Cluster> TokenFaults::cluster_;
std::unique_ptr<Connection> TokenFaults::bystander_;
std::string TokenFaults::pin_;
std::string TokenFaults::pin_file_content_;
int TokenFaults::bystander_pid_ = 0;
int TokenFaults::postmaster_pid_ = 0;
int TokenFaults::worker_pid_ = 0;

void TokenFaults::Exercise(const Fault &fault)
{
	ASSERT_TRUE(cluster_) << "the suite's cluster did not start";
	SCOPED_TRACE("fault: " + fault.name);
	Note("fault: " + fault.name);
	const std::string key_name = "after_" + fault.name;

	// Before: the token works, and the warm session has k1 in its cache (and is logged in).
	{
		Connection probe = cluster_->connect();
		ASSERT_EQ(probe.value(DecryptRow("t2", 1)), Secret(1, 0)) << "token unusable before";
	}
	Connection warm = cluster_->connect();
	ASSERT_EQ(warm.value(DecryptRow("t1", 1)), Secret(1, 0));
	ASSERT_TRUE(warm.query("SELECT pgkm_encrypt('warm'::text, 'k1')").ok());
	const std::size_t log_mark = cluster_->serverLog().size();

	// Whatever happens below, the fault is repaired before the next test.
	bool repaired = false;
	struct RepairGuard
	{
		const Fault &fault;
		bool &repaired;
		~RepairGuard()
		{
			if (!repaired)
				fault.repair();
		}
	} guard{fault, repaired};
	fault.inject();
	if (::testing::Test::HasFatalFailure())
		return;

	// A new session: everything that needs the token fails with the fault's error.
	Connection cold = cluster_->connect();
	const Outcome seen = Try(cold, DecryptRow("t2", 2));
	Note(fault.name + ": " + Show(seen));
	CheckError(seen, fault.error, "decrypt in a new session");
	CheckError(Try(cold, "SELECT pgkm.create_key('" + key_name + "')"), fault.error,
			   "create_key in a new session");
	if (fault.new_session_reaches_token)
		ExpectValue(cold, "SELECT ok FROM pgkm.verify_audit_log()", "t", "verify in a new session");
	else
		CheckError(Try(cold, "SELECT ok FROM pgkm.verify_audit_log()"), fault.error,
				   "verify_audit_log in a new session");

	// What needs no token keeps working in that session.
	ExpectValue(cold, "SELECT 1", "1", "a plain query");
	ExpectValue(cold, "SELECT count(*) FROM t1, t2 WHERE t1.id = t2.id", std::to_string(kRows),
				"a join");
	ExpectValue(cold, "SELECT (pgkm_ciphertext_info(v)).key_name FROM t2 WHERE id = 3", "k2",
				"pgkm_ciphertext_info");
	ExpectValue(cold, "SELECT pgkm.ciphertext_version(v) FROM t2 WHERE id = 3", "1",
				"ciphertext_version");
	ExpectValue(cold, "SELECT count(*) >= 3 FROM pgkm.key_status", "t", "key_status");
	ExpectValue(cold, "SELECT count(*) > 0 FROM pgkm.audit_log", "t", "reading the audit log");
	ExpectValue(cold, "SELECT count(*) = 0 FROM pgkm.keys WHERE name = '" + key_name + "'", "t",
				"no half-created key");

	// The warm session: the cached key encrypts and decrypts; an uncached one needs the token.
	ExpectValue(warm, DecryptRow("t1", 2), Secret(2, 0), "cached key, warm session");
	ExpectValue(warm, "SELECT pgkm_decrypt_text(pgkm_encrypt('abc'::text, 'k1', 'c'), 'c')", "abc",
				"cached key round trip, warm session");
	if (fault.logged_in_keeps_token)
		ExpectValue(warm, DecryptRow("t2", 4), Secret(4, 0), "logged-in warm session");
	else
	{
		const Outcome o = Try(warm, DecryptRow("t2", 4));
		CheckError(o, fault.error, "uncached key, warm session");
		EXPECT_NE(o.detail.find(fault.warm_detail), std::string::npos) << Show(o);
	}

	// The worker: sealing the audit log needs the token's MAC key; the call fails with the
	// worker's error, or works when the worker's own session is untouched by the fault.
	if (fault.worker_keeps_token)
		ExpectValue(cold, "SELECT pgkm.audit_flush(seal => true) > 0", "t", "seal");
	else
	{
		Outcome seal;
		// The worker applies a reload at its next loop: until then, it may still seal.
		WaitUntil(
			[&]
			{
				seal = Try(cold, "SELECT pgkm.audit_flush(seal => true)");
				return !seal.ok;
			},
			30s, 200ms);
		CheckError(seal, fault.error, "audit_flush(seal) answered by the worker");
		EXPECT_EQ(seal.message.rfind("the pgkm worker could not seal the audit log: ", 0), 0u)
			<< Show(seal);
	}
	if (fault.during)
		fault.during();

	// Watch the worker for a while with records flowing and a checkpoint due: it neither
	// dies nor spins, and the count flush (every naptime) does not empty the warm cache.
	const std::string before_window = cluster_->serverLog();
	const long long cpu_before = CpuTicks(worker_pid_);
	const long long flushed_before =
		cold.intValue("SELECT sum(encryptions) FROM pgkm.key_versions");
	const auto window_end = Clock::now() + kWindow;
	while (Clock::now() < window_end)
	{
		EXPECT_TRUE(warm.query("SELECT pgkm_encrypt('w'::text, 'k1')").ok());
		std::this_thread::sleep_for(250ms);
	}
	const long long cpu_used = CpuTicks(worker_pid_) - cpu_before;
	const std::string log = cluster_->serverLog();
	const std::string window_log = log.substr(std::min(before_window.size(), log.size()));
	Note(fault.name + ": the worker logged " + std::to_string(LinesOf(window_log, worker_pid_)) +
		 " lines and used " + std::to_string(cpu_used) + " CPU ticks in 6 s");
	EXPECT_LE(LinesOf(window_log, worker_pid_), kMaxWorkerLines) << "the worker floods the log:\n"
																 << window_log.substr(0, 3000);
	EXPECT_LT(cpu_used, sysconf(_SC_CLK_TCK) * 6 / 4) // < 25% of one CPU over the window
		<< "the worker spins: " << cpu_used << " ticks in 6 s";
	EXPECT_EQ(WorkerPid(cold), worker_pid_) << "the worker died or was restarted";
	EXPECT_TRUE(cold.waitFor("SELECT sum(encryptions) > " + std::to_string(flushed_before) +
								 " FROM pgkm.key_versions",
							 30s))
		<< "the worker flushed no counts during the fault";
	ExpectValue(warm, DecryptRow("t1", 5), Secret(5, 0), "cached key after count flushes");
	ExpectValue(warm, "SELECT pgkm_decrypt_text(pgkm_encrypt('abc'::text, 'k1', 'c'), 'c')", "abc",
				"cached key round trip after count flushes");

	// Repaired: the next call works, in the same sessions and in new ones, without a restart.
	repaired = true;
	fault.repair();
	if (::testing::Test::HasFatalFailure())
		return;
	ExpectValue(warm, DecryptRow("t2", 6), Secret(6, 0), "warm session after the repair");
	ExpectValue(cold, DecryptRow("t2", 7), Secret(7, 0), "cold session after the repair");
	ExpectValue(cold, "SELECT pgkm.create_key('" + key_name + "') > 0", "t",
				"create_key after the repair");
	{
		Connection fresh = cluster_->connect();
		ExpectValue(fresh, DecryptRow("t2", 8), Secret(8, 0), "new session after the repair");
		ExpectValue(fresh,
					"SELECT pgkm_decrypt_text(pgkm_encrypt('x'::text, '" + key_name +
						"', 'c'), 'c')",
					"x", "the key created after the repair");
	}
	EXPECT_TRUE(
		WaitUntil([&] { return Try(cold, "SELECT pgkm.audit_flush(seal => true)").ok; }, 30s))
		<< "the worker does not seal the audit log again: "
		<< Show(Try(cold, "SELECT pgkm.audit_flush(seal => true)"));
	ExpectValue(cold, "SELECT ok FROM pgkm.verify_audit_log()", "t", "verify after the repair");
	if (fault.after)
		fault.after();

	// No crash: the postmaster, the worker and a session open all along are the same.
	EXPECT_EQ(cluster_->postmasterPid(), postmaster_pid_) << "the postmaster restarted";
	EXPECT_EQ(WorkerPid(cold), worker_pid_) << "the worker died or was restarted";
	EXPECT_TRUE(bystander_->alive());
	EXPECT_EQ(bystander_->backendPid(), bystander_pid_);
	ExpectValue(*bystander_, "SELECT 1", "1", "the session open all along");
	const std::string fault_log = cluster_->serverLog().substr(log_mark);
	for (const char *crash : {"terminated by signal", "was terminated", "PANIC", "TRAP:",
							  "exited with exit code", "server process", "because of crash"})
		EXPECT_EQ(fault_log.find(crash), std::string::npos) << "server log has \"" << crash << "\"";
}

namespace
{

// Sets pgkm.pkcs11_module (empty: back to the cluster's SoftHSM2 module).
void TokenFaultsSetModule(const std::string &path)
{
	TokenFaults::SetToken("pgkm.pkcs11_module", path, "/usr/lib/softhsm/libsofthsm2.so");
}

// Points pgkm.pkcs11_module at path (through ALTER SYSTEM) for the fault, back after it.
Fault ModuleFault(const std::string &name, const std::string &path, Expected error)
{
	Fault f;
	f.name = name;
	f.error = std::move(error);
	f.inject = [path] { TokenFaultsSetModule(path); };
	f.repair = [] { TokenFaultsSetModule(""); };
	return f;
}

} // namespace

TEST_F(TokenFaults, ModulePathWrong)
{
	const std::string path = "/nonexistent/libpkcs11.so";
	Exercise(ModuleFault("module_missing", path,
						 {"58000", "could not load PKCS#11 module \"" + path + "\"",
						  "cannot open shared object file: No such file or directory",
						  "pgkm.pkcs11_module"}));
}

TEST_F(TokenFaults, ModuleNotPkcs11Library)
{
	const std::string libz = FirstExisting(
		{"/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1",
		 "/usr/lib/aarch64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1", "/usr/lib/libz.so.1"});
	ASSERT_FALSE(libz.empty()) << "no libz.so.1 to use as a library that is not a PKCS#11 module";
	Exercise(ModuleFault("module_libz", libz,
						 {"58000",
						  "\"" + libz + "\" is not a PKCS#11 module: it has no C_GetFunctionList",
						  "undefined symbol: C_GetFunctionList", "pgkm.pkcs11_module"}));
}

TEST_F(TokenFaults, ModuleNotElf)
{
	const std::string path = cluster_->dir() + "/not-a-module.so";
	{
		std::ofstream f(path);
		f << "This is a text file, not a shared library; dlopen must refuse it politely.\n";
	}
	ASSERT_EQ(chmod(path.c_str(), 0644), 0);
	Exercise(ModuleFault("module_not_elf", path,
						 {"58000", "could not load PKCS#11 module \"" + path + "\"",
						  "invalid ELF header", "pgkm.pkcs11_module"}));
}

TEST_F(TokenFaults, TokenAbsent)
{
	Fault f;
	f.name = "token_absent";
	f.error = {"58000", "PKCS#11 token \"no-such-token\" not found",
			   "CKR_TOKEN_NOT_PRESENT: no slot holds a token labelled \"no-such-token\"",
			   "pgkm.pkcs11_token_label"};
	f.inject = [] { SetToken("pgkm.pkcs11_token_label", "no-such-token", ""); };
	f.repair = [] { SetToken("pgkm.pkcs11_token_label", "", "pgkm-test"); };
	Exercise(f);
}

TEST_F(TokenFaults, WrongPin)
{
	const std::string pin_file = cluster_->dir() + "/pin";
	Fault f;
	f.name = "wrong_pin";
	f.error = {"58000", "could not log in to PKCS#11 token \"pgkm-test\"",
			   "C_Login: CKR_PIN_INCORRECT", "PIN file"};
	f.logged_in_keeps_token = true;
	f.worker_keeps_token = true;
	f.inject = [&] { Overwrite(pin_file, "00000000\n"); };
	f.repair = [&] { Overwrite(pin_file, pin_file_content_); };
	f.during = [&]
	{
		// A backend tries a refused PIN file once: a hardware token may lock its user.
		Connection c = cluster_->connect();
		EXPECT_EQ(Try(c, DecryptRow("t2", 10)).detail, "C_Login: CKR_PIN_INCORRECT");
		const Outcome again = Try(c, DecryptRow("t2", 11));
		EXPECT_NE(again.detail.find("not tried again until it changes"), std::string::npos)
			<< Show(again);
	};
	Exercise(f);
}

TEST_F(TokenFaults, PinFileLoosePermissions)
{
	const std::string pin_file = cluster_->dir() + "/pin";
	Fault f;
	f.name = "pin_file_0644";
	f.error = {"F0000",
			   "PIN file \"" + pin_file +
				   "\" must be owned by the server's OS user and have no group or world "
				   "permissions",
			   "The file has mode 0644", "chmod 600"};
	f.logged_in_keeps_token = true;
	f.worker_keeps_token = true;
	f.inject = [&] { ASSERT_EQ(chmod(pin_file.c_str(), 0644), 0); };
	f.repair = [&] { ASSERT_EQ(chmod(pin_file.c_str(), 0600), 0); };
	Exercise(f);
}

TEST_F(TokenFaults, PinFileMissing)
{
	const std::string pin_file = cluster_->dir() + "/pin";
	const std::string away = cluster_->dir() + "/pin.away";
	Fault f;
	f.name = "pin_file_missing";
	f.error = {"F0000", "could not open PIN file \"" + pin_file + "\": No such file or directory",
			   "open(): ENOENT", "pgkm.pkcs11_pin_file"};
	f.logged_in_keeps_token = true;
	f.worker_keeps_token = true;
	f.inject = [&] { fs::rename(pin_file, away); };
	f.repair = [&] { fs::rename(away, pin_file); };
	Exercise(f);
}

TEST_F(TokenFaults, TokenRemovedWhileRunning)
{
	// A re-encryption job, held paused, that needs the token once resumed during the fault.
	Connection admin = cluster_->connect();
	admin.exec("BEGIN");
	admin.exec("SELECT pgkm.rotate_key('k3')");
	const long long job = LatestJob(admin, "t3");
	ASSERT_GT(job, 0) << "rotate_key queued no job";
	admin.exec("SELECT pgkm.pause_job($1)", {std::to_string(job)});
	admin.exec("COMMIT");

	const std::string dir = TokenDir();
	const std::string away = cluster_->dir() + "/token-away";
	Fault f;
	f.name = "token_removed";
	f.error = {"58000", "PKCS#11 token \"pgkm-test\" not found",
			   "CKR_TOKEN_NOT_PRESENT: no slot holds a token labelled \"pgkm-test\"",
			   "pgkm.pkcs11_token_label"};
	f.warm_detail = "before reconnecting, C_UnwrapKey: CKR_";
	f.inject = [&] { fs::rename(dir, away); };
	f.repair = [&] { fs::rename(away, dir); };
	f.during = [&]
	{
		// The worker retries the batch at its naptime instead of failing the job.
		const std::size_t mark = cluster_->serverLog().size();
		admin.exec("SELECT pgkm.resume_job($1)", {std::to_string(job)});
		const std::string retry =
			"pgkm worker: re-encryption job " + std::to_string(job) + " will retry";
		EXPECT_TRUE(WaitUntil(
			[&] { return cluster_->serverLog().find(retry, mark) != std::string::npos; }, 30s))
			<< "no retry of the job in the log";
		EXPECT_NE(cluster_->serverLog().find("CKR_TOKEN_NOT_PRESENT", mark), std::string::npos);
		const JobSnapshot s = ReadJob(admin, job);
		EXPECT_TRUE(s.state == "pending" || s.state == "running") << Describe(s);
	};
	f.after = [&]
	{
		const JobSnapshot s = WaitJobFinished(admin, job, 60s);
		EXPECT_EQ(s.state, "done") << Describe(s);
		EXPECT_EQ(admin.value("SELECT count(*) FROM t3 WHERE pgkm.ciphertext_version(v) = 2"),
				  std::to_string(kRows));
	};
	Exercise(f);
}

TEST_F(TokenFaults, MasterKeyDeleted)
{
	const std::string dir = TokenDir();
	const std::string backup = cluster_->dir() + "/token-backup";
	const std::string label = "pgkm-master.v1";
	Fault f;
	f.name = "master_key_deleted";
	f.error = {"58000", "master key \"" + label + "\" not found in PKCS#11 token \"pgkm-test\"",
			   "C_FindObjects: no secret key labelled \"" + label + "\"", "backup"};
	f.worker_keeps_token = true;        // the audit MAC key is another object
	f.new_session_reaches_token = true; // verify_audit_log uses only the MAC key
	f.warm_detail = "before reconnecting, C_UnwrapKey: CKR_";
	f.inject = [&]
	{
		// The HSM's backup, taken before the deletion.
		ASSERT_EQ(RunTool(*cluster_, {"cp", "-a", dir, backup}), 0);
		ASSERT_EQ(RunTool(*cluster_, {"pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so",
									  "--token-label", "pgkm-test", "--login", "--pin", pin_,
									  "--delete-object", "--type", "secrkey", "--label", label}),
				  0)
			<< "pkcs11-tool --delete-object failed";
	};
	f.repair = [&] { ASSERT_EQ(RunTool(*cluster_, {"cp", "-a", backup + "/.", dir + "/"}), 0); };
	Exercise(f);
}

// The documented cache rule (README, the key cache): a backend keeps the keys it unwrapped for
// pgkm.key_cache_ttl, counted from when it (re)filled its cache, while the token is out; then
// the next statement needs the token again and fails with its error. A committed change to the
// key catalog empties every cache at once.
TEST_F(TokenFaults, KeyCacheTtl)
{
	constexpr int kTtl = 6;
	Connection admin = cluster_->connect();
	Connection b = cluster_->connect(); // fills its cache under the long TTL (1 h)
	ASSERT_EQ(b.value(DecryptRow("t1", 1)), Secret(1, 0));
	admin.exec("ALTER SYSTEM SET pgkm.key_cache_ttl = '" + std::to_string(kTtl) + "s'");
	WaitForSetting("pgkm.key_cache_ttl", std::to_string(kTtl) + "s");
	Connection a = cluster_->connect(); // fills its cache under the short TTL
	const auto filled = Clock::now();
	ASSERT_EQ(a.value(DecryptRow("t1", 1)), Secret(1, 0));
	const auto filled_end = Clock::now();

	const std::string dir = TokenDir();
	const std::string away = cluster_->dir() + "/token-away";
	fs::rename(dir, away);
	const Expected gone{"58000", "PKCS#11 token \"pgkm-test\" not found", "CKR_TOKEN_NOT_PRESENT",
						"pgkm.pkcs11_token_label"};

	// Before the TTL: works (checked only if this machine got here well within it).
	const Outcome early = Try(a, DecryptRow("t1", 2));
	if (Clock::now() - filled < std::chrono::seconds(kTtl - 2))
	{
		EXPECT_TRUE(early.ok) << "a cached key failed before its TTL: " << Show(early);
	}
	else
		Note("KeyCacheTtl: too slow to check the key within its TTL");

	// After the TTL: the same key fails with the token's error.
	std::this_thread::sleep_until(filled_end + std::chrono::seconds(kTtl + 1));
	CheckError(Try(a, DecryptRow("t1", 3)), gone, "a cached key after its TTL");
	CheckError(Try(a, "SELECT pgkm_encrypt('x'::text, 'k1')"), gone, "encrypting after the TTL");

	// b's cache (TTL 1 h) still works, until a committed key-catalog change empties it.
	ExpectValue(b, DecryptRow("t1", 4), Secret(4, 0), "long TTL");
	admin.exec("SELECT pgkm.set_rotation_policy('k1', max_age => '1000 days')");
	CheckError(Try(b, DecryptRow("t1", 5)), gone, "after a catalog change");

	fs::rename(away, dir);
	ExpectValue(a, DecryptRow("t1", 6), Secret(6, 0), "a after the repair");
	ExpectValue(b, DecryptRow("t1", 7), Secret(7, 0), "b after the repair");
	admin.exec("ALTER SYSTEM RESET pgkm.key_cache_ttl");
	WaitForSetting("pgkm.key_cache_ttl", "1h");
	EXPECT_EQ(cluster_->postmasterPid(), postmaster_pid_);
}

} // namespace pgkm::it
