// Tests of the PIN file rules: regular file, owned by the effective user, mode 0600 or
// stricter, small, not empty; one trailing newline stripped; content never in messages.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/provider.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

namespace
{

using pgkm::core::Error;
using pgkm::core::ErrorKind;
using pgkm::provider::ReadPinFile;

class ProviderPinFile : public ::testing::Test
{
  protected:
	// Creates a private temporary directory for the test's files.
	void SetUp() override
	{
		std::string pattern =
			(std::filesystem::temp_directory_path() / "pgkm-pinfile-XXXXXX").string();
		ASSERT_NE(mkdtemp(pattern.data()), nullptr);
		dir_ = pattern;
	}

	// Removes the directory.
	void TearDown() override { std::filesystem::remove_all(dir_); }

	// Writes a file with these contents and mode; returns its path.
	std::string Write(const std::string &name, const std::string &contents, mode_t mode)
	{
		const std::string path = dir_ + "/" + name;
		{
			std::ofstream file(path, std::ios::binary | std::ios::trunc);
			file << contents;
		}
		EXPECT_EQ(chmod(path.c_str(), mode), 0);
		return path;
	}

	// Returns the PIN as a string.
	static std::string Read(const std::string &path)
	{
		const pgkm::core::SecureBuffer pin = ReadPinFile(path);
		return std::string(reinterpret_cast<const char *>(pin.data()), pin.size());
	}

	// Reads a file that must be refused; checks the kind, that the message names the file,
	// and that the secret never shows; returns the error.
	static Error Refused(const std::string &path, const std::string &secret = "s3cret-pin")
	{
		try
		{
			ReadPinFile(path);
		}
		catch (const Error &error)
		{
			EXPECT_EQ(error.kind(), ErrorKind::Configuration);
			EXPECT_NE(error.message().find(path), std::string::npos) << error.message();
			for (const std::string *text : {&error.message(), &error.detail(), &error.hint()})
				EXPECT_EQ(text->find(secret), std::string::npos) << *text;
			return error;
		}
		ADD_FAILURE() << "ReadPinFile accepted " << path;
		return Error(ErrorKind::Internal, "not refused");
	}

	std::string dir_;
};

TEST_F(ProviderPinFile, ReadsAGoodFile)
{
	EXPECT_EQ(Read(Write("pin", "s3cret-pin", 0600)), "s3cret-pin");
	EXPECT_EQ(Read(Write("pin-ro", "s3cret-pin", 0400)), "s3cret-pin");
}

TEST_F(ProviderPinFile, StripsOneTrailingNewline)
{
	EXPECT_EQ(Read(Write("lf", "s3cret-pin\n", 0600)), "s3cret-pin");
	EXPECT_EQ(Read(Write("crlf", "s3cret-pin\r\n", 0600)), "s3cret-pin");
	EXPECT_EQ(Read(Write("two", "s3cret-pin\n\n", 0600)), "s3cret-pin\n");
	EXPECT_EQ(Read(Write("inner", "s3cret pin\twith space", 0600)), "s3cret pin\twith space");
}

TEST_F(ProviderPinFile, RefusesGroupReadable)
{
	const Error error = Refused(Write("pin", "s3cret-pin", 0640));
	EXPECT_NE(error.message().find("no group or world permissions"), std::string::npos);
	EXPECT_NE(error.hint().find("chmod 600"), std::string::npos);
}

TEST_F(ProviderPinFile, RefusesWorldReadable)
{
	Refused(Write("pin", "s3cret-pin", 0604));
	Refused(Write("pin-gw", "s3cret-pin", 0620));
	Refused(Write("pin-ox", "s3cret-pin", 0601));
}

TEST_F(ProviderPinFile, RefusesAnotherOwner)
{
	if (geteuid() != 0)
		GTEST_SKIP() << "changing a file's owner needs root";
	const std::string path = Write("pin", "s3cret-pin", 0600);
	ASSERT_EQ(chown(path.c_str(), 65534, 65534), 0);
	const Error error = Refused(path);
	EXPECT_NE(error.message().find("must be owned by the server's OS user"), std::string::npos);
}

TEST_F(ProviderPinFile, RefusesSymlink)
{
	const std::string target = Write("pin", "s3cret-pin", 0600);
	const std::string link = dir_ + "/link";
	ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
	const Error error = Refused(link);
	EXPECT_NE(error.message().find("symbolic link"), std::string::npos) << error.message();
}

TEST_F(ProviderPinFile, RefusesMissingFile)
{
	const Error error = Refused(dir_ + "/absent");
	EXPECT_NE(error.message().find("could not open PIN file"), std::string::npos);
	EXPECT_NE(error.message().find("No such file"), std::string::npos) << error.message();
}

TEST_F(ProviderPinFile, RefusesDirectory)
{
	const std::string path = dir_ + "/subdir";
	ASSERT_EQ(mkdir(path.c_str(), 0700), 0);
	const Error error = Refused(path);
	EXPECT_NE(error.message().find("not a regular file"), std::string::npos) << error.message();
}

TEST_F(ProviderPinFile, RefusesFifoWithoutBlocking)
{
	const std::string path = dir_ + "/fifo";
	ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
	const Error error = Refused(path);
	EXPECT_NE(error.message().find("not a regular file"), std::string::npos) << error.message();
}

TEST_F(ProviderPinFile, RefusesEmptyFile)
{
	EXPECT_NE(Refused(Write("empty", "", 0600)).message().find("is empty"), std::string::npos);
	EXPECT_NE(Refused(Write("newline", "\n", 0600)).message().find("is empty"), std::string::npos);
}

TEST_F(ProviderPinFile, RefusesOversizedFile)
{
	EXPECT_EQ(Read(Write("max", std::string(256, 'p'), 0600)), std::string(256, 'p'));
	const Error error = Refused(Write("big", std::string(257, 'p'), 0600), std::string(257, 'p'));
	EXPECT_NE(error.message().find("larger than 256 bytes"), std::string::npos);
}

} // namespace
