// Redaction of bind parameters from the server log. PostgreSQL logs the parameters of
// extended-protocol statements in a DETAIL ("parameters: $1 = '...'") of the log_statement
// and duration lines, and in the CONTEXT of errors when log_parameter_max_length_on_error is
// set; for a statement that calls pgkm_encrypt that is the plaintext. pgkm remembers which
// statement texts use its functions: from parse analysis and planning (views expanded,
// functions whose source mentions pgkm_, triggers of the table written) and from the calls
// its data path receives. An emit_log_hook replaces those parameters before the message is
// written, for the statements it knows (pgkm.redact_parameters = on) or for every statement
// (all). Messages are recognised by their untranslated message id; CONTEXT lines, which
// have none, by the server's own translation of their format.
#include "pgkm/pg/redact.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "pgkm/pg/guc.hpp"
#include "pgkm/pg/postgres.hpp"

extern "C"
{
#include "access/table.h"
#include "access/transam.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "common/hashfn.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "parser/analyze.h"
#include "parser/parsetree.h"
#include "tcop/tcopprot.h"
#include "utils/rel.h"
#include "utils/syscache.h"
}

namespace pgkm::pg
{

namespace
{

// Statement texts remembered per backend; past this, every statement is redacted.
inline constexpr long kMaxRemembered = 65536;

// The untranslated message ids of the log lines whose DETAIL holds the bind parameters
// (src/backend/tcop/postgres.c, the same in PostgreSQL 13 to 17): log_statement's
// "execute" line, and the duration lines of Execute and Bind.
const char *const kParameterMessages[] = {
	"%s %s%s%s: %s",
	"duration: %s ms  %s %s%s%s: %s",
	"duration: %s ms  bind %s%s%s: %s",
};

// The CONTEXT lines that show parameter values (src/backend/nodes/params.c and
// bind_param_error_callback in postgres.c); the lines without a value are harmless.
const char *const kParameterContexts[] = {
	"portal \"%s\" with parameters: %s",
	"unnamed portal with parameters: %s",
	"portal \"%s\" parameter $%d = %s",
	"unnamed portal parameter $%d = %s",
};

inline constexpr const char *kRedactedDetail = "parameters: redacted by pgkm";
inline constexpr const char *kRedactedContext = "parameters redacted by pgkm";

emit_log_hook_type prev_emit_log = nullptr;
post_parse_analyze_hook_type prev_post_parse_analyze = nullptr;
planner_hook_type prev_planner = nullptr;

HTAB *remembered = nullptr; // 64-bit hashes of statement texts that use pgkm
bool overflowed = false;    // more than kMaxRemembered texts: redact every statement
const char *noted_text = nullptr;
TimestampTz noted_start = 0;

// Returns the 64-bit hash of a statement text.
std::uint64_t TextHash(const char *text)
{
	return hash_bytes_extended(reinterpret_cast<const unsigned char *>(text),
							   static_cast<int>(strlen(text)), 0);
}

// Remembers that a statement text uses pgkm's functions.
void Remember(const char *text)
{
	if (overflowed)
		return;
	if (remembered == nullptr)
	{
		HASHCTL ctl;
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(std::uint64_t);
		ctl.entrysize = sizeof(std::uint64_t);
		ctl.hcxt = TopMemoryContext;
		remembered = hash_create("pgkm redacted statements", 256, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	if (hash_get_num_entries(remembered) >= kMaxRemembered)
	{
		overflowed = true;
		return;
	}
	std::uint64_t key = TextHash(text);
	hash_search(remembered, &key, HASH_ENTER, nullptr);
}

// Whether a statement text is known to use pgkm's functions. Never allocates or raises:
// the log hook calls it.
bool Known(const char *text)
{
	if (overflowed)
		return true;
	if (remembered == nullptr)
		return false;
	std::uint64_t key = TextHash(text);
	return hash_search(remembered, &key, HASH_FIND, nullptr) != nullptr;
}

// Whether a function is pgkm's (a C function whose probin names pgkm's library), or one in
// another language whose source mentions pgkm's functions (a wrapper in SQL or PL/pgSQL).
bool IsPgkmFunction(Oid funcid)
{
	if (funcid < FirstNormalObjectId)
		return false;
	HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tuple))
		return false;
	bool result = false;
	Oid language = reinterpret_cast<Form_pg_proc>(GETSTRUCT(tuple))->prolang;
	bool isnull;
	if (language == ClanguageId)
	{
		Datum bin = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_probin, &isnull);
		if (!isnull)
		{
			char *path = TextDatumGetCString(bin);
			const char *base = strrchr(path, '/');
			base = base ? base + 1 : path;
			result = strcmp(base, "pgkm") == 0 || strcmp(base, "pgkm.so") == 0;
			pfree(path);
		}
	}
	else if (language != INTERNALlanguageId)
	{
		Datum src = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);
		if (!isnull)
		{
			char *source = TextDatumGetCString(src);
			for (char *c = source; *c; c++)
				*c = pg_ascii_tolower(static_cast<unsigned char>(*c));
			result = strstr(source, "pgkm_") != nullptr;
			pfree(source);
		}
	}
	ReleaseSysCache(tuple);
	return result;
}

// Whether a trigger on the query's target table runs one of pgkm's functions (or a function
// whose source mentions them): the statement's parameters may be the trigger's plaintext.
bool TargetTriggersCallPgkm(Query *query)
{
	if (query->resultRelation <= 0 || query->commandType == CMD_SELECT ||
		query->commandType == CMD_UTILITY)
		return false;
	RangeTblEntry *rte = rt_fetch(query->resultRelation, query->rtable);
	if (rte->rtekind != RTE_RELATION)
		return false;
	Relation rel = table_open(rte->relid, NoLock); // locked by parse analysis
	bool result = false;
	if (rel->trigdesc)
		for (int i = 0; i < rel->trigdesc->numtriggers && !result; i++)
			result = IsPgkmFunction(rel->trigdesc->triggers[i].tgfoid);
	table_close(rel, NoLock);
	return result;
}

// Tree walker: true when the expression or query calls one of pgkm's functions, or writes to
// a table whose triggers do.
bool CallsPgkm(Node *node, void *context)
{
	if (node == nullptr)
		return false;
	if (IsA(node, FuncExpr) && IsPgkmFunction(reinterpret_cast<FuncExpr *>(node)->funcid))
		return true;
	if (IsA(node, Query) && TargetTriggersCallPgkm(reinterpret_cast<Query *>(node)))
		return true;
#if PG_VERSION_NUM >= 160000
	if (IsA(node, Query))
		return query_tree_walker(reinterpret_cast<Query *>(node), CallsPgkm, context, 0);
	return expression_tree_walker(node, CallsPgkm, context);
#else
	// Before PostgreSQL 16 the walkers take an unprototyped function pointer (void (*)() is
	// the type that GCC lets any function pointer pass through).
	auto walker = reinterpret_cast<bool (*)()>(reinterpret_cast<void (*)()>(CallsPgkm));
	if (IsA(node, Query))
		return query_tree_walker(reinterpret_cast<Query *>(node), walker, context, 0);
	return expression_tree_walker(node, walker, context);
#endif
}

// Remembers the statement text if the query calls pgkm's functions.
void NoteQuery(Query *query, const char *text)
{
	if (query == nullptr || text == nullptr || Known(text))
		return;
	if (CallsPgkm(reinterpret_cast<Node *>(query), nullptr))
		Remember(text);
}

// Whether the parameters of the statement being logged must be redacted.
bool StatementRedacted()
{
	if (guc_redact_parameters == kRedactAll)
		return true;
	return debug_query_string != nullptr && Known(debug_query_string);
}

// Whether the message is one whose DETAIL lists the bind parameters.
bool HasParameterDetail(const ErrorData *edata)
{
	if (edata->detail == nullptr || edata->message_id == nullptr)
		return false;
	for (const char *id : kParameterMessages)
		if (strcmp(edata->message_id, id) == 0)
			return true;
	return false;
}

// Returns the length of a printf conversion (%s, %d, %1$s) at p, or 0.
std::size_t ConversionAt(const char *p)
{
	if (p[0] != '%')
		return 0;
	std::size_t n = 1;
	while (p[n] >= '0' && p[n] <= '9')
		n++;
	if (n > 1 && p[n] == '$')
		n++;
	else if (n > 1)
		return 0;
	return (p[n] == 's' || p[n] == 'd') ? n + 1 : 0;
}

// Whether text starts like the format, its conversions matching anything.
bool MatchesFormat(const char *text, const char *format)
{
	const char *t = text;
	bool first = true;
	const char *f = format;
	while (*f)
	{
		const char *end = f;
		while (*end && ConversionAt(end) == 0)
			end++;
		std::size_t len = static_cast<std::size_t>(end - f);
		if (len > 0)
		{
			if (first)
			{
				if (strncmp(t, f, len) != 0)
					return false;
				t += len;
			}
			else
			{
				// The literal piece after a conversion: search for it.
				char piece[256];
				if (len >= sizeof(piece))
					return false;
				memcpy(piece, f, len);
				piece[len] = '\0';
				const char *found = strstr(t, piece);
				if (found == nullptr)
					return false;
				t = found + len;
			}
		}
		first = false;
		if (*end == '\0')
			break;
		f = end + ConversionAt(end);
	}
	return true;
}

// Returns the server's translation of one of its own messages.
const char *ServerText(const char *format)
{
#ifdef ENABLE_NLS
	return dgettext(PG_TEXTDOMAIN("postgres"), format);
#else
	return format;
#endif
}

// Returns where the CONTEXT lines that show parameter values begin, or nullptr. They come
// from the outermost error context callback, so they are the last lines; whatever follows
// their start (values may contain newlines) is theirs.
const char *ParameterContext(const char *context)
{
	for (const char *line = context; line != nullptr;)
	{
		for (const char *format : kParameterContexts)
			if (MatchesFormat(line, ServerText(format)) || MatchesFormat(line, format))
				return line;
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return nullptr;
}

// Wipes and frees a message string that held parameter values.
void WipeString(char *text)
{
	explicit_bzero(text, strlen(text));
	pfree(text);
}

// Replaces the parameter DETAIL and the parameter CONTEXT lines of a message about to be
// logged, for statements that use pgkm (or every statement); then calls the previous hook.
void RedactEmitLog(ErrorData *edata)
{
	if (guc_redact_parameters != kRedactOff && edata->output_to_server)
	{
		bool detail = HasParameterDetail(edata);
		const char *context = edata->context ? ParameterContext(edata->context) : nullptr;
		if ((detail || context) && StatementRedacted())
		{
			if (detail)
			{
				char *old = edata->detail;
				edata->detail = pstrdup(kRedactedDetail);
				WipeString(old);
			}
			if (context)
			{
				char *old = edata->context;
				std::size_t keep = static_cast<std::size_t>(context - old);
				edata->context = psprintf("%.*s%s", static_cast<int>(keep), old, kRedactedContext);
				WipeString(old);
			}
		}
	}
	if (prev_emit_log)
		prev_emit_log(edata);
}

// Parse analysis: remembers statements that call pgkm directly.
void RedactPostParseAnalyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);
	NoteQuery(query, pstate->p_sourcetext);
}

// Planning: remembers statements that call pgkm, views and rules expanded.
PlannedStmt *RedactPlanner(Query *parse, const char *query_string, int cursor_options,
						   ParamListInfo bound_params)
{
	NoteQuery(parse, query_string);
	if (prev_planner)
		return prev_planner(parse, query_string, cursor_options, bound_params);
	return standard_planner(parse, query_string, cursor_options, bound_params);
}

} // namespace

void RedactInit()
{
	prev_emit_log = emit_log_hook;
	emit_log_hook = RedactEmitLog;
	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = RedactPostParseAnalyze;
	prev_planner = planner_hook;
	planner_hook = RedactPlanner;
}

void RedactNoteDataPathUse()
{
	const char *text = debug_query_string;
	if (text == nullptr)
		return;
	TimestampTz start = GetCurrentStatementStartTimestamp();
	if (likely(text == noted_text && start == noted_start))
		return;
	Remember(text);
	noted_text = text;
	noted_start = start;
}

} // namespace pgkm::pg
