// Secrets never leak (issue 5): with PostgreSQL's most verbose logging, parameterised
// encrypt and decrypt calls, failing ones included, leave no plaintext, DEK, working key, PIN
// or wrapped key in the server log, pg_stat_statements, NOTICEs or error fields; a backend
// keeps its keys only in locked, undumped memory between transactions and none after its
// cache is emptied; and a server whose memory-lock limit is 0 warns once and still works.
// The DEK is obtained the way the server does: the pure library unwraps the catalog's
// wrapped DEK through the provider API against the cluster's token, as the server's OS user,
// while the server is stopped. No secret is ever printed: failures name the secret and where
// it was found, never its value.
#include "cluster.hpp"
#include "helpers.hpp"

#include "pgkm/core/key_material.hpp"
#include "pgkm/provider/provider.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <pwd.h>
#include <sstream>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pgkm::it
{
namespace
{

// --- Secrets and their printable forms --------------------------------------------------

// Lower-case hex of bytes.
std::string Hex(const std::string &bytes, bool upper = false)
{
	static const char *lower_digits = "0123456789abcdef";
	static const char *upper_digits = "0123456789ABCDEF";
	const char *digits = upper ? upper_digits : lower_digits;
	std::string out;
	for (unsigned char c : bytes)
	{
		out += digits[c >> 4];
		out += digits[c & 15];
	}
	return out;
}

// Standard base64 of bytes.
std::string Base64(const std::string &bytes)
{
	std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
	int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
							reinterpret_cast<const unsigned char *>(bytes.data()),
							static_cast<int>(bytes.size()));
	out.resize(static_cast<std::size_t>(n));
	return out;
}

// Bytes of a hex string (PostgreSQL's bytea output "\x..." accepted).
std::string Unhex(std::string hex)
{
	if (hex.rfind("\\x", 0) == 0)
		hex = hex.substr(2);
	std::string out;
	for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
		out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
	return out;
}

// A secret under a name that may be printed, with every form it could be written in.
struct Leakable
{
	std::string name;
	std::vector<std::pair<std::string, std::string>> forms; // (form name, bytes)
};

// The forms of binary key material: raw, hex (both cases), base64.
Leakable KeySecret(const std::string &name, const std::string &bytes)
{
	return {name,
			{{"raw", bytes},
			 {"hex", Hex(bytes)},
			 {"HEX", Hex(bytes, true)},
			 {"base64", Base64(bytes)}}};
}

// The forms of a plaintext marker: as text, and hex and base64 of its bytes.
Leakable TextSecret(const std::string &name, const std::string &text)
{
	return {name, {{"text", text}, {"hex", Hex(text)}, {"base64", Base64(text)}}};
}

// A random marker plaintext that no other text contains.
std::string Marker(const std::string &tag)
{
	std::ifstream urandom("/dev/urandom", std::ios::binary);
	std::string bytes(8, '\0');
	urandom.read(bytes.data(), 8);
	return "pgkm-plaintext-" + tag + "-" + Hex(bytes);
}

// Reports every form of every secret found in a text, by name and offset only. Returns the
// number of findings.
int ExpectNoSecret(const std::string &where, const std::string &text,
				   const std::vector<Leakable> &secrets)
{
	int found = 0;
	for (const auto &secret : secrets)
		for (const auto &[form, bytes] : secret.forms)
		{
			std::size_t at = text.find(bytes);
			if (at != std::string::npos)
			{
				++found;
				ADD_FAILURE() << secret.name << " (" << form << ") found in " << where
							  << " at offset " << at;
			}
		}
	return found;
}

// --- Key material, as the server sees it --------------------------------------------------

struct KeyBytes
{
	std::string wrapped;   // the catalog's wrapped DEK
	std::string dek;       // unwrapped through the token
	std::string gcm_key;   // HKDF(DEK, "pgkm/v1/aes-256-gcm")
	std::string check_key; // HKDF(DEK, "pgkm/v1/key-check")
};

// Unwraps a wrapped DEK through the provider API as the server's OS user (its PIN file must
// be owned by the reader), in a child process: the token files stay the server user's.
std::string UnwrapAsServerUser(const Cluster &cluster, const std::string &label,
							   const std::string &wrapped)
{
	passwd *pw = getpwnam("postgres");
	if (getuid() == 0 && pw == nullptr)
		throw std::runtime_error("no OS user postgres");
	int fds[2];
	if (pipe(fds) != 0)
		throw std::runtime_error("pipe failed");
	pid_t child = fork();
	if (child == 0)
	{
		close(fds[0]);
		if (getuid() == 0 && (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0))
			_exit(2);
		setenv("SOFTHSM2_CONF", cluster.softhsmConf().c_str(), 1);
		int status = 3;
		try
		{
			provider::Pkcs11Config config{Cluster::softhsmModule(), Cluster::tokenLabel(),
										  cluster.pinFile()};
			auto token = provider::MakePkcs11Provider(config);
			core::SecureBuffer dek = token->Unwrap(
				label, {reinterpret_cast<const std::uint8_t *>(wrapped.data()), wrapped.size()});
			status =
				write(fds[1], dek.data(), dek.size()) == static_cast<ssize_t>(dek.size()) ? 0 : 4;
		}
		catch (...)
		{
		}
		_exit(status);
	}
	close(fds[1]);
	std::string dek;
	char buf[64];
	ssize_t n;
	while ((n = read(fds[0], buf, sizeof buf)) > 0)
		dek.append(buf, static_cast<std::size_t>(n));
	close(fds[0]);
	int status = 0;
	waitpid(child, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || dek.size() != core::kDekSize)
		throw std::runtime_error("unwrapping the DEK as the server user failed (status " +
								 std::to_string(status) + ")");
	return dek;
}

// Reads version 1 of a key's wrapped DEK from the catalog, unwraps it and derives the
// working keys. With stop, the server is stopped first (the caller restarts it if needed);
// without, the server must be idle: SoftHSM2 misreads its token files when processes log in
// at the same moment.
KeyBytes ReadKeyBytes(Cluster &cluster, const std::string &key, bool stop = true)
{
	KeyBytes k;
	std::string label;
	{
		Connection db = cluster.connect();
		Result r = db.exec("SELECT v.wrapped_dek, m.label FROM pgkm.key_versions v"
						   " JOIN pgkm.keys k USING (key_id)"
						   " JOIN pgkm.master_keys m USING (master_key_id)"
						   " WHERE k.name = $1 AND v.version = 1",
						   {key});
		k.wrapped = Unhex(r.get(0, 0));
		label = r.get(0, 1);
	}
	if (stop)
		cluster.stop();
	k.dek = UnwrapAsServerUser(cluster, label, k.wrapped);
	core::ByteView dek(reinterpret_cast<const std::uint8_t *>(k.dek.data()), k.dek.size());
	auto gcm = core::DeriveKey(dek, core::kLabelGcm, 32);
	auto check = core::DeriveKey(dek, core::kLabelKeyCheck, 32);
	k.gcm_key.assign(reinterpret_cast<const char *>(gcm.data()), gcm.size());
	k.check_key.assign(reinterpret_cast<const char *>(check.data()), check.size());
	return k;
}

// --- What a client sees: every field of every NOTICE and error --------------------------

const int kDiagFields[] = {
	PG_DIAG_SEVERITY,           PG_DIAG_SEVERITY_NONLOCALIZED,
	PG_DIAG_SQLSTATE,           PG_DIAG_MESSAGE_PRIMARY,
	PG_DIAG_MESSAGE_DETAIL,     PG_DIAG_MESSAGE_HINT,
	PG_DIAG_STATEMENT_POSITION, PG_DIAG_INTERNAL_POSITION,
	PG_DIAG_INTERNAL_QUERY,     PG_DIAG_CONTEXT,
	PG_DIAG_SCHEMA_NAME,        PG_DIAG_TABLE_NAME,
	PG_DIAG_COLUMN_NAME,        PG_DIAG_DATATYPE_NAME,
	PG_DIAG_CONSTRAINT_NAME,    PG_DIAG_SOURCE_FILE,
	PG_DIAG_SOURCE_LINE,        PG_DIAG_SOURCE_FUNCTION,
};

// Appends every diagnostic field of a result, and its whole verbose message, to out.
void AppendFields(const PGresult *res, std::string &out)
{
	for (int field : kDiagFields)
		if (const char *value = PQresultErrorField(res, field))
			out += std::string(value) + "\n";
	char *verbose = PQresultVerboseErrorMessage(res, PQERRORS_VERBOSE, PQSHOW_CONTEXT_ALWAYS);
	if (verbose)
	{
		out += verbose;
		PQfreemem(verbose);
	}
}

// A client connection that records every NOTICE and every error field it receives.
class Client
{
  public:
	explicit Client(const std::string &conninfo) : conn_(PQconnectdb(conninfo.c_str()))
	{
		if (PQstatus(conn_) != CONNECTION_OK)
			throw std::runtime_error(std::string("connection failed: ") + PQerrorMessage(conn_));
		PQsetNoticeReceiver(
			conn_,
			[](void *arg, const PGresult *res)
			{
				auto *self = static_cast<Client *>(arg);
				const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
				self->notice_messages_.push_back(primary ? primary : "");
				AppendFields(res, self->seen_notices_);
			},
			this);
	}
	~Client() { PQfinish(conn_); }
	Client(const Client &) = delete;
	Client &operator=(const Client &) = delete;

	// Runs a statement with text parameters (extended protocol); returns its SQLSTATE, "" on
	// success. Error fields are recorded.
	std::string run(const std::string &sql, const std::vector<std::string> &params = {},
					std::string *first_value = nullptr)
	{
		std::vector<const char *> values;
		for (const auto &p : params)
			values.push_back(p.c_str());
		PGresult *res = PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
									 values.data(), nullptr, nullptr, 0);
		return finish(res, first_value);
	}

	// Prepares a named statement (extended protocol).
	void prepare(const std::string &name, const std::string &sql, int nparams)
	{
		PGresult *res = PQprepare(conn_, name.c_str(), sql.c_str(), nparams, nullptr);
		std::string state = finish(res, nullptr);
		if (!state.empty())
			throw std::runtime_error("prepare failed: " + state);
	}

	// Executes a named prepared statement; returns its SQLSTATE, "" on success.
	std::string runPrepared(const std::string &name, const std::vector<std::string> &params)
	{
		std::vector<const char *> values;
		for (const auto &p : params)
			values.push_back(p.c_str());
		PGresult *res = PQexecPrepared(conn_, name.c_str(), static_cast<int>(values.size()),
									   values.data(), nullptr, nullptr, 0);
		return finish(res, nullptr);
	}

	const std::string &errors() const { return seen_errors_; }
	const std::string &notices() const { return seen_notices_; }
	// The primary message of each NOTICE (or WARNING) received, in order.
	const std::vector<std::string> &noticeMessages() const { return notice_messages_; }
	int pid() const { return PQbackendPID(conn_); }

  private:
	// Records a result's error fields and returns its SQLSTATE ("" on success).
	std::string finish(PGresult *res, std::string *first_value)
	{
		if (res == nullptr)
			throw std::runtime_error(std::string("no result: ") + PQerrorMessage(conn_));
		ExecStatusType st = PQresultStatus(res);
		std::string state;
		if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		{
			if (first_value && PQntuples(res) > 0)
				*first_value = PQgetvalue(res, 0, 0);
		}
		else
		{
			AppendFields(res, seen_errors_);
			const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			state = s ? s : "?????";
		}
		PQclear(res);
		return state;
	}

	PGconn *conn_;
	std::string seen_errors_;
	std::string seen_notices_;
	std::vector<std::string> notice_messages_;
};

// --- Backend memory ---------------------------------------------------------------------

// One readable mapping of a process, with its VmFlags from smaps.
struct Mapping
{
	std::uintptr_t start = 0;
	std::uintptr_t end = 0;
	std::string path;
	std::string flags; // " rd wr mr mw me lo dd ..." (leading and trailing spaces)
};

// Reads the mappings of a process and their VmFlags.
std::vector<Mapping> ReadMappings(int pid)
{
	std::ifstream smaps("/proc/" + std::to_string(pid) + "/smaps");
	std::vector<Mapping> maps;
	std::string line;
	while (std::getline(smaps, line))
	{
		if (line.rfind("VmFlags:", 0) == 0)
		{
			if (!maps.empty())
				maps.back().flags = line.substr(8) + " ";
			continue;
		}
		std::size_t dash = line.find('-');
		std::size_t space = line.find(' ');
		if (dash == std::string::npos || space == std::string::npos || dash > space)
			continue;
		if (line.find(':') < dash) // "Size:" and the like
			continue;
		Mapping m;
		try
		{
			m.start = std::stoull(line.substr(0, dash), nullptr, 16);
			m.end = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
		}
		catch (const std::exception &)
		{
			continue;
		}
		std::istringstream fields(line);
		std::string range, perms, offset, dev, inode;
		fields >> range >> perms >> offset >> dev >> inode;
		std::getline(fields, m.path);
		m.path.erase(0, m.path.find_first_not_of(' '));
		if (perms.empty() || perms[0] != 'r')
			m.start = m.end = 0; // not readable: kept only to hold its VmFlags line
		maps.push_back(m);
	}
	return maps;
}

// Where a pattern was found in a process's memory.
struct Occurrence
{
	std::uintptr_t address;
	const Mapping *mapping;
};

// Searches every readable mapping of a process (through /proc/<pid>/mem, as root) for each
// pattern. Unreadable mappings ([vvar], device memory) are skipped.
std::map<std::string, std::vector<Occurrence>>
ScanMemory(int pid, const std::vector<Mapping> &maps,
		   const std::map<std::string, std::string> &patterns)
{
	std::map<std::string, std::vector<Occurrence>> found;
	for (const auto &[name, bytes] : patterns)
		found[name];
	int fd = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY);
	if (fd < 0)
		throw std::runtime_error("cannot open /proc/" + std::to_string(pid) +
								 "/mem: " + std::strerror(errno));
	constexpr std::size_t kChunk = 8 << 20;
	constexpr std::size_t kOverlap = 64;
	std::string buf(kChunk + kOverlap, '\0');
	for (const auto &m : maps)
	{
		if (m.end <= m.start || m.path == "[vvar]" || m.path == "[vsyscall]" ||
			m.path == "[vvar_vclock]")
			continue;
		for (std::uintptr_t at = m.start; at < m.end; at += kChunk)
		{
			std::size_t want = std::min<std::uintptr_t>(m.end - at, kChunk + kOverlap);
			ssize_t got = pread(fd, buf.data(), want, static_cast<off_t>(at));
			if (got <= 0)
				break;
			std::string_view view(buf.data(), static_cast<std::size_t>(got));
			for (const auto &[name, bytes] : patterns)
				for (std::size_t pos = view.find(bytes); pos != std::string_view::npos;
					 pos = view.find(bytes, pos + 1))
					if (pos < kChunk) // the overlap is searched again with the next chunk
						found[name].push_back({at + pos, &m});
		}
	}
	close(fd);
	return found;
}

// Whether a mapping is locked (lo) and excluded from core dumps (dd).
bool LockedAndUndumped(const Mapping &m)
{
	return m.flags.find(" lo ") != std::string::npos && m.flags.find(" dd ") != std::string::npos;
}

// Describes occurrences by mapping (never the bytes).
std::string Where(const std::vector<Occurrence> &occurrences)
{
	std::string out;
	for (const auto &o : occurrences)
	{
		std::ostringstream line;
		line << std::hex << "0x" << o.address << " in " << o.mapping->start << "-" << o.mapping->end
			 << " " << (o.mapping->path.empty() ? "[anon]" : o.mapping->path)
			 << " flags:" << o.mapping->flags << "\n";
		out += line.str();
	}
	return out;
}

// Whether the CPU has AES-NI (OpenSSL then keeps the raw key as the first round keys).
bool CpuHasAesNi()
{
	std::ifstream in("/proc/cpuinfo");
	std::string line;
	while (std::getline(in, line))
		if (line.rfind("flags", 0) == 0)
			return (line + " ").find(" aes ") != std::string::npos;
	return false;
}

// The number of lines of a text that contain needle.
int CountLines(const std::string &text, const std::string &needle)
{
	int n = 0;
	std::istringstream in(text);
	std::string line;
	while (std::getline(in, line))
		if (line.find(needle) != std::string::npos)
			++n;
	return n;
}

} // namespace

// (a) With every logging setting at its most verbose, parameterised calls (successful and
// failing, direct, through a view, a PL/pgSQL wrapper and a prepared statement with a generic
// plan) leave no secret in the server log, pg_stat_statements, NOTICEs or error fields. The
// probe is shown to work: with pgkm.redact_parameters = off the plaintext is in the log.
TEST(Secrets, NoSecretInLogsStatsNoticesOrErrors)
{
	Cluster cluster({"shared_preload_libraries = 'pgkm,pg_stat_statements'",
					 "log_min_messages = debug5", "log_error_verbosity = verbose",
					 "log_statement = all", "log_min_error_statement = debug5",
					 "pgkm.audit_notice = on", "pg_stat_statements.track = all"});
	cluster.quietOnFailure();
	cluster.start();

	std::vector<Leakable> secrets;
	auto marker = [&](const std::string &tag)
	{
		std::string m = Marker(tag);
		secrets.push_back(TextSecret("plaintext '" + tag + "'", m));
		return m;
	};

	Client admin(cluster.conninfo());
	for (const char *sql : {
			 "CREATE EXTENSION pgkm",
			 "CREATE EXTENSION pg_stat_statements",
			 "SELECT pgkm.create_key('pii')",
			 "CREATE TABLE people (id int PRIMARY KEY, v bytea)",
			 "CREATE ROLE intruder LOGIN",
			 "GRANT SELECT ON people TO intruder",
			 "CREATE VIEW people_clear AS SELECT id, pgkm_decrypt_text(v, id::text) AS plain "
			 "FROM people",
			 "CREATE FUNCTION wrap_encrypt(p text) RETURNS bytea LANGUAGE plpgsql AS "
			 "$$BEGIN RETURN pgkm_encrypt(p, 'pii'); END$$",
			 "GRANT EXECUTE ON FUNCTION wrap_encrypt(text) TO intruder",
			 "CREATE TABLE inbox (id int PRIMARY KEY, plain text, v bytea)",
			 "CREATE FUNCTION inbox_encrypt() RETURNS trigger LANGUAGE plpgsql AS "
			 "$$BEGIN NEW.v := pgkm_encrypt(NEW.plain, 'pii', NEW.id::text); NEW.plain := NULL; "
			 "RETURN NEW; END$$",
			 "CREATE TRIGGER inbox_encrypt BEFORE INSERT ON inbox FOR EACH ROW EXECUTE "
			 "FUNCTION inbox_encrypt()",
		 })
		ASSERT_EQ(admin.run(sql), "") << sql;

	// Successful calls: direct, binary, through a view, a wrapper, a prepared statement.
	for (int id = 1; id <= 3; ++id)
		ASSERT_EQ(admin.run("INSERT INTO people VALUES ($1::int, pgkm_encrypt($2::text, 'pii', "
							"$1::text))",
							{std::to_string(id), marker("insert" + std::to_string(id))}),
				  "");
	std::string stored = secrets[0].forms[0].second;
	std::string value;
	ASSERT_EQ(
		admin.run("SELECT pgkm_decrypt_text(v, $1) FROM people WHERE id = $2", {"1", "1"}, &value),
		"");
	ASSERT_EQ(value, stored); // the client asked for it: the result is not a leak
	ASSERT_EQ(admin.run("SELECT pgkm_encrypt($1::text, $2)", {marker("select"), "pii"}), "");
	ASSERT_EQ(admin.run("SELECT pgkm_encrypt($1::bytea, 'pii')", {"\\x" + Hex(marker("bytea"))}),
			  "");
	ASSERT_EQ(admin.run("SELECT id FROM people_clear WHERE plain = $1", {stored}, &value), "");
	ASSERT_EQ(value, "1");
	ASSERT_EQ(admin.run("SELECT wrap_encrypt($1)", {marker("wrapper")}), "");
	// A trigger encrypts: the statement names no pgkm function, its first execution included.
	ASSERT_EQ(admin.run("INSERT INTO inbox VALUES ($1::int, $2)", {"1", marker("trigger")}), "");
	admin.prepare("enc", "SELECT pgkm_encrypt($1::text, 'pii')", 1);
	for (int i = 0; i < 8; ++i) // past the fifth execution the plan is generic (no planning)
		ASSERT_EQ(admin.runPrepared("enc", {marker("prepared" + std::to_string(i))}), "");

	// Failing calls.
	std::string ciphertext;
	ASSERT_EQ(admin.run("SELECT v FROM people WHERE id = 2", {}, &ciphertext), "");
	std::string tampered = Unhex(ciphertext);
	tampered[tampered.size() - 1] ^= 1;
	EXPECT_EQ(admin.run("SELECT pgkm_decrypt_text(v, $1) FROM people WHERE id = $2",
						{"wrong-context", "2"}),
			  "22000");
	EXPECT_EQ(admin.run("SELECT pgkm_decrypt_text($1::bytea, $2)", {"\\x" + Hex(tampered), "2"}),
			  "22000");
	EXPECT_EQ(admin.run("SELECT pgkm_encrypt($1::text, $2)", {marker("unknown-key"), "no_such"}),
			  "42704");
	EXPECT_EQ(
		admin.run("SELECT pgkm_encrypt($1::text, 'pii'), 1 / $2::int", {marker("division"), "0"}),
		"22012");

	// Errors with parameters in their CONTEXT, and duration lines with parameters.
	{
		Client verbose(cluster.conninfo());
		ASSERT_EQ(verbose.run("SET log_parameter_max_length_on_error = -1"), "");
		ASSERT_EQ(verbose.run("SET log_min_duration_statement = 0"), "");
		EXPECT_EQ(verbose.run("SELECT pgkm_encrypt($1::text, $2)",
							  {marker("context-unknown-key"), "no_such"}),
				  "42704");
		EXPECT_EQ(verbose.run("SELECT pgkm_encrypt($1::text, 'pii'), 1 / $2::int",
							  {marker("context-division"), "0"}),
				  "22012");
		// A parameter that fails its type's input (bytea: the message quotes one character;
		// the CONTEXT the whole value).
		EXPECT_EQ(verbose.run("SELECT pgkm_encrypt($1::bytea, 'pii')",
							  {"\\x" + Hex(marker("context-bind")) + "zz"}),
				  "22023");
		EXPECT_EQ(
			verbose.run("SELECT wrap_encrypt($1), 1 / $2::int", {marker("context-wrapper"), "0"}),
			"22012");
		ASSERT_EQ(verbose.run("SELECT pgkm_encrypt($1::text, 'pii')", {marker("duration")}), "");
		ExpectNoSecret("a client's error fields (log_parameter_max_length_on_error = -1)",
					   verbose.errors(), secrets);
		ExpectNoSecret("a client's NOTICEs (log_parameter_max_length_on_error = -1)",
					   verbose.notices(), secrets);
	}

	// A role without the key's privileges, directly and through the wrapper.
	{
		Client intruder(cluster.conninfo() + " user=intruder");
		EXPECT_EQ(intruder.run("SELECT pgkm_encrypt($1::text, 'pii')", {marker("denied")}),
				  "42501");
		EXPECT_EQ(intruder.run("SELECT wrap_encrypt($1)", {marker("denied-wrapper")}), "42501");
		EXPECT_EQ(
			intruder.run("SELECT pgkm_decrypt_text(v, id::text) FROM people WHERE id = $1", {"3"}),
			"42501");
		ExpectNoSecret("the denied role's error fields", intruder.errors(), secrets);
		ExpectNoSecret("the denied role's NOTICEs", intruder.notices(), secrets);
	}

	// The probe: with redaction off, the same kind of call puts its plaintext in the log
	// (DETAIL of the execute line) and, on error, in the CONTEXT sent to the client.
	std::string probe_detail = Marker("probe-detail");
	std::string probe_context = Marker("probe-context");
	std::string probe_errors;
	{
		Client probe(cluster.conninfo());
		ASSERT_EQ(probe.run("SET pgkm.redact_parameters = off"), "");
		ASSERT_EQ(probe.run("SET log_parameter_max_length_on_error = -1"), "");
		ASSERT_EQ(probe.run("SELECT pgkm_encrypt($1::text, 'pii')", {probe_detail}), "");
		EXPECT_EQ(probe.run("SELECT pgkm_encrypt($1::text, $2)", {probe_context, "no_such"}),
				  "42704");
		probe_errors = probe.errors();
	}

	EXPECT_GT(admin.noticeMessages().size(), 0u) << "pgkm.audit_notice mirrored no record";
	ExpectNoSecret("the superuser's error fields", admin.errors(), secrets);
	ExpectNoSecret("the superuser's NOTICEs", admin.notices(), secrets);

	std::string statements;
	ASSERT_EQ(
		admin.run("SELECT string_agg(query, E'\\n') FROM pg_stat_statements", {}, &statements), "");
	EXPECT_NE(statements.find("pgkm_encrypt($1::text, $2)"), std::string::npos)
		<< "pg_stat_statements recorded none of the test's statements";
	ExpectNoSecret("pg_stat_statements", statements, secrets);

	// The key material: the DEK, its working keys and the wrapped DEK; and the PIN.
	KeyBytes key = ReadKeyBytes(cluster, "pii"); // stops the server
	secrets.push_back(KeySecret("the DEK", key.dek));
	secrets.push_back(KeySecret("the AES-256-GCM working key", key.gcm_key));
	secrets.push_back(KeySecret("the key-check working key", key.check_key));
	secrets.push_back(KeySecret("the wrapped DEK", key.wrapped));
	std::string pin;
	{
		std::ifstream in(cluster.pinFile());
		std::getline(in, pin);
	}
	ASSERT_FALSE(pin.empty());
	secrets.push_back(TextSecret("the PIN", pin));

	std::string log = cluster.serverLog();
	ExpectNoSecret("the server log", log, secrets);
	ExpectNoSecret("pg_stat_statements", statements, secrets);
	ExpectNoSecret("the superuser's error fields", admin.errors(), secrets);
	ExpectNoSecret("the superuser's NOTICEs", admin.notices(), secrets);

	// The probe finds what redaction removes.
	EXPECT_NE(log.find(probe_detail), std::string::npos)
		<< "with pgkm.redact_parameters = off the plaintext parameter is not in the log: the "
		   "search could not have found a leak";
	EXPECT_NE(log.find(probe_context), std::string::npos)
		<< "with redaction off the CONTEXT of a failing call holds no parameter";
	EXPECT_NE(probe_errors.find(probe_context), std::string::npos)
		<< "with redaction off the client's CONTEXT holds no parameter";
	EXPECT_GE(CountLines(log, "DETAIL:  parameters: redacted by pgkm"), 20);
	EXPECT_GE(CountLines(log, "parameters redacted by pgkm"), 4);
	EXPECT_GE(CountLines(log, "duration: "), 2);
	Note("server log: " + std::to_string(log.size()) + " bytes, " +
		 std::to_string(CountLines(log, "parameters: redacted by pgkm")) +
		 " parameter lists redacted; " + std::to_string(secrets.size()) +
		 " secrets searched in their forms");
}

// (b) Between transactions a backend holds its working key only in locked, undumped memory
// (the OpenSSL contexts that hold key schedules in ordinary heap are freed at transaction
// end) and the DEK nowhere; once its cache is emptied, no copy of either remains.
TEST(Secrets, KeysOnlyInLockedMemoryAndWipedFromTheCache)
{
	// Reading another process's memory needs root (as make test runs), or the server's own
	// OS user where ptrace is not restricted; otherwise ScanMemory fails the test, saying why.
	// No audit checkpoint (a token call) while the test unwraps with the server idle.
	Cluster cluster({"pgkm.audit_checkpoint_interval = 1d"});
	cluster.quietOnFailure();
	cluster.start();
	// The creator generates and wraps the DEK through the token, and encrypts with it.
	Connection creator = cluster.connect();
	SetUpExtension(creator, "k");
	creator.exec("SELECT pgkm.create_key('other')");
	creator.exec("CREATE TABLE t (id int PRIMARY KEY, v bytea)");
	creator.exec("INSERT INTO t VALUES (1, pgkm_encrypt('memory-test'::text, 'k', '1'))");
	ASSERT_TRUE(creator.waitFor("SELECT pgkm.audit_flush() IS NOT NULL", 30s));
	KeyBytes key = ReadKeyBytes(cluster, "k", false);

	Connection backend = cluster.connect();
	Connection other = cluster.connect();
	int pid = backend.backendPid();
	ASSERT_EQ(backend.value("SELECT pgkm_decrypt_text(v, id::text) FROM t"), "memory-test");
	const std::map<std::string, std::string> patterns = {
		{"DEK", key.dek}, {"GCM working key", key.gcm_key}, {"key-check key", key.check_key}};

	// The backend that generated, wrapped (SoftHSM's C_CreateObject, C_WrapKey) and used the
	// DEK keeps no copy of it.
	auto maps = ReadMappings(creator.backendPid());
	auto found = ScanMemory(creator.backendPid(), maps, patterns);
	EXPECT_EQ(found["DEK"].size(), 0u) << "the creating backend kept the DEK:\n"
									   << Where(found["DEK"]);
	EXPECT_EQ(found["key-check key"].size(), 0u) << Where(found["key-check key"]);
	for (const auto &o : found["GCM working key"])
		EXPECT_TRUE(LockedAndUndumped(*o.mapping)) << "creator:\n" << Where({o});

	// Idle, after the transaction: the working key only in locked, undumped pages.
	maps = ReadMappings(pid);
	found = ScanMemory(pid, maps, patterns);
	EXPECT_EQ(found["DEK"].size(), 0u) << "the DEK outlived its derivation:\n"
									   << Where(found["DEK"]);
	EXPECT_EQ(found["key-check key"].size(), 0u) << Where(found["key-check key"]);
	ASSERT_GE(found["GCM working key"].size(), 1u)
		<< "the working key is not in the backend's memory: the scan cannot find anything";
	for (const auto &o : found["GCM working key"])
		EXPECT_TRUE(LockedAndUndumped(*o.mapping))
			<< "working key outside locked, undumped memory:\n"
			<< Where({o});
	Note("idle backend: GCM working key found " + std::to_string(found["GCM working key"].size()) +
		 " time(s), all in lo+dd mappings:\n" + Where(found["GCM working key"]));

	// Inside a transaction that used it, OpenSSL's contexts hold the key schedule (whose
	// first round keys are the key itself) in ordinary heap: the scan sees them.
	backend.exec("BEGIN");
	backend.exec("SELECT pgkm_decrypt_text(v, id::text) FROM t");
	maps = ReadMappings(pid);
	found = ScanMemory(pid, maps, patterns);
	int outside = 0;
	for (const auto &o : found["GCM working key"])
		outside += LockedAndUndumped(*o.mapping) ? 0 : 1;
	Note("inside a transaction: GCM working key found " +
		 std::to_string(found["GCM working key"].size()) + " time(s), " + std::to_string(outside) +
		 " outside lo+dd (OpenSSL's key schedule)");
	// With AES-NI the schedule starts with the raw key; other implementations store it
	// transformed, where this check cannot see it.
	if (CpuHasAesNi())
	{
		EXPECT_GE(outside, 1) << "no key schedule in OpenSSL's heap during the transaction: the "
								 "idle check above proves less than it seems";
	}
	backend.exec("COMMIT");
	maps = ReadMappings(pid);
	found = ScanMemory(pid, maps, patterns);
	for (const auto &o : found["GCM working key"])
		EXPECT_TRUE(LockedAndUndumped(*o.mapping))
			<< "after COMMIT the key schedule is still in ordinary memory:\n"
			<< Where({o});

	// Empty the cache: a committed catalog change bumps the shared generation; the backend's
	// next data-path call drops (and wipes) every cached key before failing on an unknown key.
	other.exec("SELECT pgkm.set_rotation_policy('other', max_encryptions => 1000)");
	Result r = backend.query("SELECT pgkm_encrypt('x'::text, 'no_such_key')");
	ASSERT_EQ(r.sqlstate(), "42704");
	maps = ReadMappings(pid);
	found = ScanMemory(pid, maps, patterns);
	for (const auto &[name, occurrences] : found)
		EXPECT_EQ(occurrences.size(), 0u) << name << " remains after the cache was emptied:\n"
										  << Where(occurrences);
}

// (b2) A version evicted from the key cache (pgkm.key_cache_size, LRU) is wiped at once: its
// working key, found in the backend's locked memory while cached, is found nowhere once a
// lower cache size evicts it (on a cache hit, so no new key is written over its slot), while
// the key still cached, in the same locked page, is found.
TEST(Secrets, EvictedKeyIsWipedFromMemory)
{
	Cluster cluster({"pgkm.audit_checkpoint_interval = 1d"});
	cluster.quietOnFailure();
	cluster.start();
	Connection creator = cluster.connect();
	SetUpExtension(creator, "evicted");
	creator.exec("SELECT pgkm.create_key('kept_a'), pgkm.create_key('kept_b')");
	creator.exec("CREATE TABLE t (k text PRIMARY KEY, v bytea)");
	creator.exec("INSERT INTO t SELECT k, pgkm_encrypt('value of ' || k, k, k) FROM "
				 "unnest(ARRAY['evicted', 'kept_a', 'kept_b']) k");
	ASSERT_TRUE(creator.waitFor("SELECT pgkm.audit_flush() IS NOT NULL", 30s));
	const KeyBytes evicted = ReadKeyBytes(cluster, "evicted", false);
	const KeyBytes kept = ReadKeyBytes(cluster, "kept_b", false);
	const std::map<std::string, std::string> patterns = {{"evicted", evicted.gcm_key},
														 {"kept", kept.gcm_key}};

	Connection backend = cluster.connect();
	const int pid = backend.backendPid();
	backend.exec("SET pgkm.key_cache_size = 3");
	const std::string decrypt = "SELECT pgkm_decrypt_text(v, k) FROM t WHERE k = $1";
	for (const char *key : {"evicted", "kept_a", "kept_b"})
		ASSERT_EQ(backend.value(decrypt, {key}), std::string("value of ") + key);
	auto maps = ReadMappings(pid);
	auto found = ScanMemory(pid, maps, patterns);
	ASSERT_GE(found["evicted"].size(), 1u)
		<< "the cached working key is not in the backend's memory: the scan sees nothing";
	for (const auto &o : found["evicted"])
		EXPECT_TRUE(LockedAndUndumped(*o.mapping)) << Where({o});

	// The least recently used version goes at the next use of the cache, a hit.
	backend.exec("SET pgkm.key_cache_size = 2");
	ASSERT_EQ(backend.value(decrypt, {"kept_b"}), "value of kept_b");
	EXPECT_EQ(backend.value("SELECT cached_versions || ' ' || evictions || ' ' || unwraps FROM "
							"pgkm.key_cache_stats()"),
			  "2 1 3");
	maps = ReadMappings(pid);
	found = ScanMemory(pid, maps, patterns);
	EXPECT_EQ(found["evicted"].size(), 0u) << "the evicted working key remains:\n"
										   << Where(found["evicted"]);
	ASSERT_GE(found["kept"].size(), 1u) << "a cached working key is not found";
	for (const auto &o : found["kept"])
		EXPECT_TRUE(LockedAndUndumped(*o.mapping)) << Where({o});
	Note("after eviction: the evicted key found nowhere; a cached one at:\n" +
		 Where(found["kept"]));
}

// (c) With RLIMIT_MEMLOCK = 0 a backend cannot lock key memory: it warns once (not once per
// key) and still encrypts and decrypts.
TEST(Secrets, MlockRefusedWarnsOnceAndWorks)
{
	// The server inherits this process's soft limit (runuser's pam_limits leaves it alone
	// when limits.conf sets none); lowering it needs no privilege, and it is restored at once.
	Cluster cluster;
	struct rlimit saved;
	ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &saved), 0);
	struct rlimit zero = saved;
	zero.rlim_cur = 0;
	ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &zero), 0) << std::strerror(errno);
	try
	{
		cluster.start();
	}
	catch (...)
	{
		setrlimit(RLIMIT_MEMLOCK, &saved);
		throw;
	}
	ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &saved), 0);
	{
		Connection db = cluster.connect();
		SetUpExtension(db, "k1");
		db.exec("SELECT pgkm.create_key('k2')");
		db.exec("CREATE TABLE t (id int PRIMARY KEY, v bytea)");
		db.exec("INSERT INTO t VALUES (1, pgkm_encrypt('one'::text, 'k1', '1')),"
				" (2, pgkm_encrypt('two'::text, 'k2', '2'))");
	}

	Client client(cluster.conninfo());
	std::string limits;
	{
		std::ifstream in("/proc/" + std::to_string(client.pid()) + "/limits");
		std::stringstream ss;
		ss << in.rdbuf();
		limits = ss.str();
	}
	std::string line = limits.substr(limits.find("Max locked memory"));
	line = line.substr(0, line.find('\n'));
	EXPECT_NE(line.find(" 0  "), std::string::npos) << "the backend's limit: " << line;

	std::string value;
	ASSERT_EQ(client.run("SELECT string_agg(pgkm_decrypt_text(v, id::text), ',' ORDER BY id) "
						 "FROM t",
						 {}, &value),
			  "");
	EXPECT_EQ(value, "one,two");
	ASSERT_EQ(client.run("SELECT pgkm_decrypt_text(pgkm_encrypt('three'::text, 'k2'))", {}, &value),
			  "");
	EXPECT_EQ(value, "three");
	EXPECT_EQ(std::count(client.noticeMessages().begin(), client.noticeMessages().end(),
						 "pgkm could not lock key memory in RAM"),
			  1);

	std::string log = cluster.serverLog();
	std::string tag = "[" + std::to_string(client.pid()) +
					  "] WARNING:  pgkm could not lock key "
					  "memory in RAM";
	EXPECT_EQ(CountLines(log, tag), 1) << cluster.serverLogTail(20);
	EXPECT_NE(log.find("RLIMIT_MEMLOCK: 0 bytes"), std::string::npos);
}

} // namespace pgkm::it
