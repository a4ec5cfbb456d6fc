// The integration test fixture: see cluster.hpp.
#include "cluster.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <poll.h>
#include <pwd.h>
#include <sstream>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char **environ;

namespace pgkm::it
{

namespace
{

constexpr const char *kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";
constexpr const char *kTokenLabel = "pgkm-test";
constexpr const char *kServerUser = "postgres"; // when the tests run as root

std::mutex note_mutex;

// --- Cleanup on SIGINT/SIGTERM/SIGHUP/SIGABRT ------------------------------------------
// The handler may only use async-signal-safe calls: it sends SIGQUIT (immediate shutdown)
// to each registered postmaster, waits briefly for it, and removes the directories with
// rm -rf through fork + execve. Everything it reads is prepared beforehand.

struct CleanupSlot
{
	std::atomic<bool> used{false};
	std::atomic<pid_t> postmaster{0};
	char dir[512] = {};
};
std::array<CleanupSlot, 16> cleanup_slots;
std::atomic<pid_t> running_child{0}; // process group of the command runAsServerUser runs
bool keep_dirs = false;
char rm_path[64] = "/bin/rm";

void SleepMs(long ms)
{
	timespec ts{ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, nullptr);
}

extern "C" void CleanupOnSignal(int sig)
{
	if (pid_t child = running_child.load(); child > 0)
		kill(-child, SIGKILL);
	for (auto &slot : cleanup_slots)
	{
		pid_t pm = slot.postmaster.load();
		if (slot.used.load() && pm > 0)
			kill(pm, SIGQUIT);
	}
	for (auto &slot : cleanup_slots)
	{
		pid_t pm = slot.postmaster.load();
		if (!slot.used.load() || pm <= 0)
			continue;
		for (int i = 0; i < 100 && kill(pm, 0) == 0; ++i)
			SleepMs(50);
		if (kill(pm, 0) == 0)
			kill(pm, SIGKILL);
	}
	if (!keep_dirs)
	{
		for (auto &slot : cleanup_slots)
		{
			if (!slot.used.load() || slot.dir[0] == '\0')
				continue;
			pid_t child = fork();
			if (child == 0)
			{
				char arg0[] = "rm";
				char arg1[] = "-rf";
				char *const argv[] = {arg0, arg1, slot.dir, nullptr};
				execve(rm_path, argv, environ);
				_exit(127);
			}
			if (child > 0)
				waitpid(child, nullptr, 0);
		}
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

void InstallCleanupHandlers()
{
	static std::once_flag once;
	std::call_once(once,
				   []
				   {
					   keep_dirs = std::getenv("PGKM_KEEP") != nullptr;
					   if (access("/bin/rm", X_OK) != 0)
						   std::strcpy(rm_path, "/usr/bin/rm");
					   struct sigaction sa = {};
					   sa.sa_handler = CleanupOnSignal;
					   sigemptyset(&sa.sa_mask);
					   sa.sa_flags = SA_RESETHAND;
					   for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGABRT})
						   sigaction(sig, &sa, nullptr);
					   // The postmaster outlives pg_ctl: become its parent (instead of
					   // init), so that a postmaster killed by a test is reaped at once (a
					   // zombie still "exists" for the next postmaster's lock file check).
					   prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
				   });
}

int RegisterDir(const std::string &dir)
{
	for (size_t i = 0; i < cleanup_slots.size(); ++i)
	{
		bool expected = false;
		auto &slot = cleanup_slots[i];
		if (slot.used.load())
			continue;
		std::snprintf(slot.dir, sizeof slot.dir, "%s", dir.c_str());
		slot.postmaster = 0;
		if (slot.used.compare_exchange_strong(expected, true))
			return static_cast<int>(i);
	}
	return -1;
}

// --- Processes --------------------------------------------------------------------------

std::string FindExecutable(const std::string &name)
{
	if (name.find('/') != std::string::npos)
		return name;
	const char *path = std::getenv("PATH");
	std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
	dirs += ":/usr/sbin:/sbin";
	std::stringstream ss(dirs);
	std::string d;
	while (std::getline(ss, d, ':'))
	{
		std::string candidate = d + "/" + name;
		if (!d.empty() && access(candidate.c_str(), X_OK) == 0)
			return candidate;
	}
	throw std::runtime_error("executable not found in PATH: " + name);
}

std::string PgBinDir()
{
	static std::string dir = []
	{
		// PGKM_PG_BINDIR selects another (e.g. a relocated copy made by scripts/stage.sh).
		if (const char *bindir = std::getenv("PGKM_PG_BINDIR"); bindir && *bindir)
			return std::string(bindir);
		FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
		std::string out;
		if (p)
		{
			char buf[512];
			while (fgets(buf, sizeof buf, p))
				out += buf;
			pclose(p);
		}
		while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
			out.pop_back();
		if (out.empty())
			out = "/usr/lib/postgresql/15/bin";
		return out;
	}();
	return dir;
}

// Returns PGKM_SERVER_ENV, the environment for the server only, as VAR=value words separated by
// spaces (as in test/lib/cluster.sh; scripts/sanitize.sh preloads the ASan runtime this way).
std::vector<std::string> ServerEnv()
{
	std::vector<std::string> words;
	const char *env = std::getenv("PGKM_SERVER_ENV");
	std::stringstream ss(env ? env : "");
	std::string word;
	while (ss >> word)
	{
		if (word.find('=') == std::string::npos || word.front() == '=')
			throw std::runtime_error("PGKM_SERVER_ENV: not a VAR=value word: " + word);
		words.push_back(word);
	}
	return words;
}

std::string RandomHex(size_t bytes)
{
	std::ifstream urandom("/dev/urandom", std::ios::binary);
	std::string out;
	static const char *hex = "0123456789abcdef";
	for (size_t i = 0; i < bytes; ++i)
	{
		unsigned char c = static_cast<unsigned char>(urandom.get());
		out += hex[c >> 4];
		out += hex[c & 15];
	}
	return out;
}

void WriteFile(const std::string &path, const std::string &content, mode_t mode,
			   bool append = false)
{
	int fd =
		open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), mode);
	if (fd < 0)
		throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
	size_t done = 0;
	while (done < content.size())
	{
		ssize_t n = write(fd, content.data() + done, content.size() - done);
		if (n < 0)
		{
			close(fd);
			throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
		}
		done += static_cast<size_t>(n);
	}
	if (!append)
		fchmod(fd, mode);
	close(fd);
}

std::string ReadFile(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

} // namespace

void Note(const std::string &line)
{
	std::lock_guard lock(note_mutex);
	std::cerr << "[ pgkm-it  ] " << line << std::endl;
}

bool WaitUntil(const std::function<bool()> &pred, std::chrono::milliseconds timeout,
			   std::chrono::milliseconds interval)
{
	auto deadline = Clock::now() + timeout;
	for (;;)
	{
		if (pred())
			return true;
		if (Clock::now() >= deadline)
			return false;
		std::this_thread::sleep_for(interval);
	}
}

// --- Result -----------------------------------------------------------------------------

Result &Result::operator=(Result &&other) noexcept
{
	if (this != &other)
	{
		if (res_)
			PQclear(res_);
		res_ = other.res_;
		other.res_ = nullptr;
	}
	return *this;
}

Result::~Result()
{
	if (res_)
		PQclear(res_);
}

bool Result::ok() const
{
	if (!res_)
		return false;
	auto st = PQresultStatus(res_);
	return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

std::string Result::sqlstate() const
{
	if (!res_ || ok())
		return "";
	const char *s = PQresultErrorField(res_, PG_DIAG_SQLSTATE);
	return s ? s : "";
}

std::string Result::message() const
{
	if (!res_)
		return "no result";
	if (ok())
		return "";
	std::string m = PQresultErrorMessage(res_);
	while (!m.empty() && m.back() == '\n')
		m.pop_back();
	return m;
}

int Result::rows() const
{
	return res_ ? PQntuples(res_) : 0;
}
int Result::cols() const
{
	return res_ ? PQnfields(res_) : 0;
}

long Result::affected() const
{
	const char *n = res_ ? PQcmdTuples(res_) : "";
	return (n && *n) ? std::atol(n) : 0;
}

std::string Result::get(int row, int col) const
{
	if (row >= rows() || col >= cols())
		throw std::out_of_range("result has no row " + std::to_string(row) + " column " +
								std::to_string(col));
	return PQgetvalue(res_, row, col);
}

long long Result::getInt(int row, int col) const
{
	if (isNull(row, col))
		throw std::runtime_error("NULL where an integer was expected");
	return std::stoll(get(row, col));
}

bool Result::isNull(int row, int col) const
{
	if (row >= rows() || col >= cols())
		throw std::out_of_range("result has no row " + std::to_string(row));
	return PQgetisnull(res_, row, col) != 0;
}

// --- Connection -------------------------------------------------------------------------

Connection::Connection(const std::string &conninfo) : conn_(PQconnectdb(conninfo.c_str()))
{
	if (!conn_ || PQstatus(conn_) != CONNECTION_OK)
	{
		std::string msg = conn_ ? PQerrorMessage(conn_) : "out of memory";
		if (conn_)
			PQfinish(conn_);
		conn_ = nullptr;
		while (!msg.empty() && msg.back() == '\n')
			msg.pop_back();
		throw PgError("connection failed: " + msg, "");
	}
	// NOTICEs (e.g. "key has no active version now") are expected; keep the output quiet.
	PQsetNoticeProcessor(
		conn_, [](void *, const char *) {}, nullptr);
}

Connection &Connection::operator=(Connection &&other) noexcept
{
	if (this != &other)
	{
		if (conn_)
			PQfinish(conn_);
		conn_ = other.conn_;
		other.conn_ = nullptr;
	}
	return *this;
}

Connection::~Connection()
{
	if (conn_)
		PQfinish(conn_);
}

Result Connection::query(const std::string &sql, const Params &params)
{
	if (!conn_)
		throw PgError("query on a closed connection", "");
	std::vector<const char *> values;
	values.reserve(params.size());
	for (const auto &p : params)
		values.push_back(p.c_str());
	PGresult *res = PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
								 values.data(), nullptr, nullptr, 0);
	if (!res)
		throw PgError(std::string("no result: ") + PQerrorMessage(conn_), "");
	return Result(res);
}

Result Connection::exec(const std::string &sql, const Params &params)
{
	Result r = query(sql, params);
	if (!r.ok())
	{
		std::string shown = sql.size() > 200 ? sql.substr(0, 200) + "..." : sql;
		throw PgError(r.message() + " [SQLSTATE " + r.sqlstate() + "] in: " + shown, r.sqlstate());
	}
	return r;
}

std::string Connection::value(const std::string &sql, const Params &params)
{
	Result r = exec(sql, params);
	if (r.rows() < 1 || r.cols() < 1)
		throw std::runtime_error("no row from: " + sql);
	if (r.isNull(0, 0))
		throw std::runtime_error("NULL from: " + sql);
	return r.get(0, 0);
}

long long Connection::intValue(const std::string &sql, const Params &params)
{
	return std::stoll(value(sql, params));
}

std::optional<std::string> Connection::valueOrNull(const std::string &sql, const Params &params)
{
	Result r = exec(sql, params);
	if (r.rows() < 1 || r.cols() < 1 || r.isNull(0, 0))
		return std::nullopt;
	return r.get(0, 0);
}

bool Connection::waitFor(const std::string &predicate, std::chrono::milliseconds timeout,
						 const Params &params, std::chrono::milliseconds interval)
{
	return WaitUntil([&]
					 { return valueOrNull(predicate, params) == std::optional<std::string>("t"); },
					 timeout, interval);
}

int Connection::backendPid() const
{
	return conn_ ? PQbackendPID(conn_) : 0;
}

bool Connection::alive() const
{
	return conn_ && PQstatus(conn_) == CONNECTION_OK;
}

// --- Cluster ----------------------------------------------------------------------------

void Cluster::createDir()
{
	InstallCleanupHandlers();
	std::string pattern = "/tmp/pgkm-it.XXXXXX";
	if (!mkdtemp(pattern.data()))
		throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
	dir_ = pattern;
	slot_ = RegisterDir(dir_);
	chmod(dir_.c_str(), 0700);
	chownToServer(dir_);
	data_ = dir_ + "/data";
}

Cluster::Cluster(std::vector<std::string> extra_settings)
{
	createDir();
	conf_ = dir_ + "/softhsm2.conf";
	pin_file_ = dir_ + "/pin";

	std::filesystem::create_directory(dir_ + "/tokens");
	chownToServer(dir_ + "/tokens");
	chmod((dir_ + "/tokens").c_str(), 0700);
	WriteFile(conf_,
			  "directories.tokendir = " + dir_ +
				  "/tokens\n"
				  "objectstore.backend = file\n"
				  "log.level = ERROR\n"
				  "slots.removable = false\n"
				  "library.reset_on_fork = true\n",
			  0600);
	chownToServer(conf_);
	std::string pin = RandomHex(12);
	std::string so_pin = RandomHex(12);
	WriteFile(pin_file_, pin + "\n", 0600);
	chownToServer(pin_file_);

	std::string out;
	if (runAsServerUser({"softhsm2-util", "--init-token", "--free", "--label", kTokenLabel,
						 "--so-pin", so_pin, "--pin", pin},
						&out) != 0)
		throw std::runtime_error("softhsm2-util --init-token failed: " + out);
	initCluster(extra_settings);
}

Cluster Cluster::sharingTokenOf(const Cluster &other, std::vector<std::string> extra_settings)
{
	return Cluster(other, std::move(extra_settings), TokenTag{});
}

Cluster::Cluster(const Cluster &other, std::vector<std::string> extra_settings, TokenTag)
{
	createDir();
	conf_ = other.conf_; // the same token: both servers run on this machine
	pin_file_ = other.pin_file_;
	port_ = other.port_ + 2;
	try
	{
		initCluster(extra_settings);
	}
	catch (...)
	{
		std::error_code ec;
		std::filesystem::remove_all(dir_, ec);
		if (slot_ >= 0)
			cleanup_slots[slot_].used = false;
		throw;
	}
}

void Cluster::initCluster(const std::vector<std::string> &extra_settings)
{
	std::string out;
	if (runAsServerUser({PgBinDir() + "/initdb", "-D", data_, "-U", "postgres", "-A", "trust", "-E",
						 "UTF8", "--locale=C.UTF-8", "--no-sync"},
						&out) != 0)
		throw std::runtime_error("initdb failed: " + out);

	std::string conf = "\n# pgkm integration tests (as test/lib/cluster.sh)\n"
					   "listen_addresses = ''\n"
					   "port = " +
					   std::to_string(port_) +
					   "\n"
					   "unix_socket_directories = '" +
					   dir_ +
					   "'\n"
					   "shared_preload_libraries = 'pgkm'\n"
					   "pgkm.pkcs11_module = '" +
					   kSoftHsmModule +
					   "'\n"
					   "pgkm.pkcs11_token_label = '" +
					   kTokenLabel +
					   "'\n"
					   "pgkm.pkcs11_pin_file = '" +
					   pin_file_ +
					   "'\n"
					   "max_connections = 40\n"
					   "log_min_messages = warning\n"
					   "log_line_prefix = '%m [%p] '\n"
					   "# per test\n";
	for (const auto &line : extra_settings)
		conf += line + "\n";
	// For debugging a failure: PGKM_IT_LOG_LEVEL=debug1 (the server log is shown on failure).
	if (const char *level = std::getenv("PGKM_IT_LOG_LEVEL"); level && *level)
		conf += std::string("log_min_messages = ") + level + "\n";
	WriteFile(data_ + "/postgresql.conf", conf, 0600, true);
}

Cluster Cluster::standbyOf(const Cluster &primary)
{
	return Cluster(primary, StandbyTag{});
}

Cluster::Cluster(const Cluster &primary, StandbyTag)
{
	createDir();
	conf_ = primary.conf_; // the same token: both servers run on this machine
	pin_file_ = primary.pin_file_;
	port_ = primary.port_ + 1;
	try
	{
		std::string out;
		if (runAsServerUser({PgBinDir() + "/pg_basebackup", "-h", primary.dir_, "-p",
							 std::to_string(primary.port_), "-U", "postgres", "-D", data_, "-R",
							 "-X", "stream", "--checkpoint=fast", "--no-sync"},
							&out) != 0)
			throw std::runtime_error("pg_basebackup failed: " + out);
		// The backup's postgresql.conf is the primary's: the later lines win.
		appendConf("\n# pgkm integration tests: standby of " + primary.dir_ +
				   "\n"
				   "port = " +
				   std::to_string(port_) + "\nunix_socket_directories = '" + dir_ + "'");
	}
	catch (...)
	{
		std::error_code ec;
		std::filesystem::remove_all(dir_, ec);
		if (slot_ >= 0)
			cleanup_slots[slot_].used = false;
		throw;
	}
}

Cluster::~Cluster()
{
	try
	{
		if ((::testing::Test::HasFailure() || std::uncaught_exceptions() > 0) && !quiet_)
			Note("server log of " + dir_ + " (last lines):\n" + serverLogTail(60));
		if (postmasterPid() > 0)
		{
			pgCtlStop("fast");
			if (postmasterPid() > 0)
				pgCtlStop("immediate");
			int pm = postmasterPid();
			if (pm > 0 && kill(pm, 0) == 0)
				kill(pm, SIGKILL);
		}
	}
	catch (const std::exception &e)
	{
		Note(std::string("cluster stop failed: ") + e.what());
	}
	while (waitpid(-1, nullptr, WNOHANG) > 0) // exited postmasters and orphans
	{
	}
	// PGKM_SERVER_LOG_DIR receives a copy of the server log (scripts/sanitize.sh scans them).
	if (const char *logs = std::getenv("PGKM_SERVER_LOG_DIR"); logs && *logs)
	{
		std::error_code ec;
		std::filesystem::copy_file(
			dir_ + "/server.log",
			std::string(logs) + "/" + std::filesystem::path(dir_).filename().string() + ".log", ec);
	}
	if (std::getenv("PGKM_KEEP"))
		Note("kept " + dir_);
	else
	{
		std::error_code ec;
		std::filesystem::remove_all(dir_, ec);
	}
	if (slot_ >= 0)
	{
		cleanup_slots[slot_].postmaster = 0;
		cleanup_slots[slot_].used = false;
	}
}

void Cluster::chownToServer(const std::string &path) const
{
	if (getuid() != 0)
		return;
	static passwd *pw = getpwnam(kServerUser);
	if (!pw)
		throw std::runtime_error("no OS user postgres");
	if (chown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0)
		throw std::runtime_error("chown " + path + ": " + std::strerror(errno));
}

std::string Cluster::pgBin(const std::string &name)
{
	return PgBinDir() + "/" + name;
}

int Cluster::runAsServerUser(const std::vector<std::string> &argv, std::string *output,
							 std::chrono::seconds timeout) const
{
	std::vector<std::string> full;
	if (getuid() == 0)
		full = {FindExecutable("runuser"), "-u", kServerUser, "--"};
	full.push_back(FindExecutable("env"));
	full.push_back("SOFTHSM2_CONF=" + conf_);
	full.insert(full.end(), argv.begin(), argv.end());
	std::vector<char *> cargv;
	for (auto &a : full)
		cargv.push_back(a.data());
	cargv.push_back(nullptr);

	int fds[2];
	if (pipe2(fds, O_CLOEXEC) != 0)
		throw std::runtime_error("pipe2 failed");
	pid_t pid = fork();
	if (pid < 0)
		throw std::runtime_error("fork failed");
	if (pid == 0)
	{
		// Only async-signal-safe calls until execve.
		setpgid(0, 0);
		if (chdir("/") != 0)
			_exit(126);
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		execve(cargv[0], cargv.data(), environ);
		_exit(127);
	}
	running_child = pid;
	close(fds[1]);
	std::string out;
	auto deadline = Clock::now() + timeout;
	bool timed_out = false;
	for (;;)
	{
		auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
		if (left.count() <= 0)
		{
			timed_out = true;
			break;
		}
		pollfd pfd{fds[0], POLLIN, 0};
		int n = poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			continue;
		char buf[4096];
		ssize_t got = read(fds[0], buf, sizeof buf);
		if (got <= 0)
			break;
		out.append(buf, static_cast<size_t>(got));
	}
	close(fds[0]);
	if (timed_out)
		kill(-pid, SIGKILL);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
	{
	}
	running_child = 0;
	if (output)
		*output = out;
	if (timed_out)
	{
		if (output)
			*output += "\n(timed out after " + std::to_string(timeout.count()) + " s)";
		return -1;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void Cluster::registerPostmaster()
{
	if (slot_ >= 0)
		cleanup_slots[slot_].postmaster = postmasterPid();
}

void Cluster::start()
{
	std::string out;
	// runAsServerUser runs argv through env(1): the VAR=value words come first.
	std::vector<std::string> argv = ServerEnv();
	argv.insert(argv.end(), {PgBinDir() + "/pg_ctl", "-D", data_, "-l", dir_ + "/server.log", "-w",
							 "-t", "60", "start"});
	int rc = runAsServerUser(argv, &out, 90s);
	registerPostmaster();
	if (rc != 0)
		throw std::runtime_error("server did not start (" + out + "); log:\n" + serverLogTail(40));
}

void Cluster::pgCtlStop(const std::string &mode)
{
	std::string out;
	runAsServerUser({PgBinDir() + "/pg_ctl", "-D", data_, "-w", "-t", "60", "-m", mode, "stop"},
					&out, 90s);
}

void Cluster::stop()
{
	pgCtlStop("fast");
	if (postmasterPid() > 0)
		throw std::runtime_error("server did not stop; log:\n" + serverLogTail(20));
	registerPostmaster();
}

void Cluster::stopImmediate()
{
	pgCtlStop("immediate");
	if (postmasterPid() > 0)
		throw std::runtime_error("server did not stop (immediate); log:\n" + serverLogTail(20));
	registerPostmaster();
}

void Cluster::restart()
{
	stop();
	start();
}

void Cluster::appendConf(const std::string &line)
{
	WriteFile(data_ + "/postgresql.conf", line + "\n", 0600, true);
}

void Cluster::kill9(int pid)
{
	if (pid <= 0)
		throw std::invalid_argument("kill9: no pid");
	if (kill(pid, SIGKILL) != 0)
		throw std::runtime_error("kill -9 " + std::to_string(pid) + ": " + std::strerror(errno));
	// If it is our child (the postmaster, through PR_SET_CHILD_SUBREAPER), reap it.
	WaitUntil(
		[&]
		{
			pid_t r = waitpid(pid, nullptr, WNOHANG);
			return r == pid || (r < 0 && errno == ECHILD);
		},
		10s, 10ms);
}

void Cluster::waitReady(std::chrono::milliseconds timeout, const std::string &db)
{
	std::string last;
	bool ok = WaitUntil(
		[&]
		{
			try
			{
				Connection c(conninfo(db));
				return c.query("SELECT 1").ok();
			}
			catch (const std::exception &e)
			{
				last = e.what();
				return false;
			}
		},
		timeout, 200ms);
	registerPostmaster();
	if (!ok)
		throw std::runtime_error("server not ready after " + std::to_string(timeout.count()) +
								 " ms: " + last + "\nlog:\n" + serverLogTail(30));
}

Connection Cluster::connect(const std::string &db) const
{
	return Connection(conninfo(db));
}

std::string Cluster::conninfo(const std::string &db) const
{
	return "host=" + dir_ + " port=" + std::to_string(port_) + " user=postgres dbname=" + db +
		   " connect_timeout=10 application_name=pgkm_integration"
		   " options='-c statement_timeout=120s'"; // no statement of a test may hang
}

int Cluster::postmasterPid() const
{
	std::ifstream in(data_ + "/postmaster.pid");
	int pid = 0;
	if (!(in >> pid) || pid <= 0)
		return 0;
	if (kill(pid, 0) != 0 && errno == ESRCH)
		return 0;
	return pid;
}

const char *Cluster::softhsmModule()
{
	return kSoftHsmModule;
}

const char *Cluster::tokenLabel()
{
	return kTokenLabel;
}

std::string Cluster::serverLog() const
{
	return ReadFile(dir_ + "/server.log");
}

std::string Cluster::serverLogTail(int lines) const
{
	std::string log = serverLog();
	size_t pos = log.size();
	for (int n = 0; n <= lines && pos > 0; ++n)
	{
		pos = log.rfind('\n', pos - 1);
		if (pos == std::string::npos)
		{
			pos = 0;
			break;
		}
	}
	return log.substr(pos);
}

} // namespace pgkm::it
