"""The state's schema: append-only named migrations (m001...), and how they are applied."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gptbatch.errors import StateError

SCHEMA_VERSION = 1

# Append-only, named migrations (as simonw/llm does): never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_initial",
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE inputs(
            path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
            defaults TEXT, requests INTEGER, synced_at REAL);
        CREATE TABLE requests(
            path TEXT NOT NULL, ordinal INTEGER NOT NULL, line INTEGER NOT NULL,
            offset INTEGER NOT NULL, length INTEGER NOT NULL, key TEXT NOT NULL,
            custom_id TEXT NOT NULL, model TEXT, url TEXT NOT NULL, tokens INTEGER NOT NULL,
            nbytes INTEGER NOT NULL, inputs INTEGER NOT NULL, cost REAL, reason TEXT,
            PRIMARY KEY(path, ordinal));
        CREATE INDEX requests_key ON requests(key);
        CREATE INDEX requests_custom_id ON requests(custom_id);
        CREATE TABLE results(
            key TEXT PRIMARY KEY, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            line TEXT, error TEXT, batch_id TEXT, updated_at REAL);
        CREATE TABLE shards(
            id TEXT PRIMARY KEY, model TEXT, url TEXT NOT NULL, requests INTEGER NOT NULL,
            tokens INTEGER NOT NULL, nbytes INTEGER NOT NULL, cost REAL, state TEXT NOT NULL,
            file_id TEXT, batch_id TEXT, nonce TEXT, refusals INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0, created_at REAL, updated_at REAL, note TEXT);
        CREATE INDEX shards_state ON shards(state);
        CREATE TABLE members(
            shard TEXT NOT NULL, ordinal INTEGER NOT NULL, key TEXT NOT NULL,
            custom_id TEXT NOT NULL, PRIMARY KEY(shard, ordinal));
        CREATE INDEX members_key ON members(key);
        CREATE INDEX members_custom_id ON members(shard, custom_id);
        CREATE TABLE batches(
            id TEXT PRIMARY KEY, shard TEXT NOT NULL, status TEXT NOT NULL,
            input_file_id TEXT, output_file_id TEXT, error_file_id TEXT, created_at INTEGER,
            collected INTEGER NOT NULL DEFAULT 0, info TEXT);
        CREATE INDEX batches_shard ON batches(shard);
        """,
    ),
    (
        # Counters bumped by triggers in the writing transaction, so cached answers keyed by
        # them stay exact across kills; result lines stored compressed (zline) from now on.
        "m002_counters_zline",
        """
        ALTER TABLE results ADD COLUMN zline BLOB;
        CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters(name, value) VALUES ('requests', 0), ('results', 0), ('shards', 0);
        """
        + "".join(
            f"""
        CREATE TRIGGER {table}_{op[:3].lower()} AFTER {op} ON {table} BEGIN
            UPDATE counters SET value=value+1 WHERE name='{table}';
        END;"""
            for table in ("requests", "results", "shards")
            for op in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
    (
        # A digest of each request line's raw bytes: a sync that finds the same bytes where
        # the walk expects them reuses the row without parsing the line again. Rows from
        # before hold NULL and are read in full once.
        "m003_request_digest",
        """
        ALTER TABLE requests ADD COLUMN digest BLOB;
        """,
    ),
    (
        # Each request row carries its key's outcome (done: 0 none yet or to retry, 1 ok,
        # 2 failed for good) and which write of that result it is (result_version), kept by
        # triggers in the writing transaction. The open rows have their own small index, so
        # what is pending is found in O(pending), not by joining every request with its
        # result; an output rewrite copies a line it wrote before when its request's
        # result_version is the same. A result's version is the results counter + 1 when
        # write_results inserted it (unique, never 0); an UPDATE makes it unknown (NULL);
        # results from before get -rowid (unique, and never a counter value).
        "m004_request_outcome",
        """
        ALTER TABLE results ADD COLUMN version INTEGER;
        UPDATE results SET version=-rowid;
        ALTER TABLE requests ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE requests ADD COLUMN result_version INTEGER;
        UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
            WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=requests.key), 0),
            result_version=(SELECT s.version FROM results s WHERE s.key=requests.key);
        CREATE INDEX requests_open ON requests(path, ordinal) WHERE done=0;
        CREATE TRIGGER requests_done_ins AFTER INSERT ON requests
        WHEN NEW.done IS NOT coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0)
            OR NEW.result_version IS NOT (SELECT s.version FROM results s WHERE s.key=NEW.key)
        BEGIN
            UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0),
                result_version=(SELECT s.version FROM results s WHERE s.key=NEW.key)
            WHERE rowid=NEW.rowid;
        END;
        CREATE TRIGGER requests_done_key AFTER UPDATE OF key ON requests
        WHEN OLD.key IS NOT NEW.key
        BEGIN
            UPDATE requests SET done=coalesce((SELECT CASE s.state WHEN 'ok' THEN 1
                WHEN 'failed' THEN 2 ELSE 0 END FROM results s WHERE s.key=NEW.key), 0),
                result_version=(SELECT s.version FROM results s WHERE s.key=NEW.key)
            WHERE rowid=NEW.rowid;
        END;
        CREATE TRIGGER results_done_ins AFTER INSERT ON results BEGIN
            UPDATE requests SET done=CASE NEW.state WHEN 'ok' THEN 1 WHEN 'failed' THEN 2
                ELSE 0 END, result_version=NEW.version WHERE key=NEW.key;
        END;
        CREATE TRIGGER results_done_upd AFTER UPDATE ON results BEGIN
            UPDATE results SET version=NULL WHERE rowid=NEW.rowid AND version IS NOT NULL;
            UPDATE requests SET done=0, result_version=NULL WHERE key=OLD.key;
            UPDATE requests SET done=CASE NEW.state WHEN 'ok' THEN 1 WHEN 'failed' THEN 2
                ELSE 0 END, result_version=NULL WHERE key=NEW.key;
        END;
        CREATE TRIGGER results_done_del AFTER DELETE ON results BEGIN
            UPDATE requests SET done=0, result_version=NULL WHERE key=OLD.key;
        END;
        """,
    ),
    (
        # A member is looked up by custom_id only within one shard (whose members the primary
        # key already lists in order): this index held a 64-character shard id per request.
        "m005_drop_members_custom_id",
        """
        DROP INDEX IF EXISTS members_custom_id;
        """,
    ),
    (
        # Per output file: the stat it had when written, and the result_version and length
        # of each of its lines, so the next rewrite copies the lines that did not change.
        "m006_output_index",
        """
        CREATE TABLE output_index(
            output TEXT PRIMARY KEY, stat TEXT NOT NULL, entries BLOB NOT NULL);
        """,
    ),
    (
        # Finished shards forget their members once every batch of theirs is collected
        # (Store.release_members); this releases those of states written before.
        "m007_release_members",
        """
        DELETE FROM members WHERE shard IN (SELECT h.id FROM shards h WHERE h.state='done'
            AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.shard=h.id AND b.collected=0));
        """,
    ),
    (
        # A line made longer moves every row after it (line, offset): no cached answer reads
        # those, and an input whose lines moved has a new sha256 (in outputs_fingerprint),
        # so such a shift no longer bumps the requests counter once per row.
        "m008_requests_counter_columns",
        """
        DROP TRIGGER requests_upd;
        CREATE TRIGGER requests_upd AFTER UPDATE OF path, ordinal, length, key, custom_id,
            model, url, tokens, nbytes, inputs, cost, reason, digest, done, result_version
            ON requests BEGIN
            UPDATE counters SET value=value+1 WHERE name='requests';
        END;
        """,
    ),
    (
        # build -B / --retry-failed: the keys one run sends again although they hold a final
        # result (resend, emptied when the next run starts), and the shards packed with them
        # (resend_shards), whose final outcomes replace those results. Nothing is reset up
        # front: an old result stays the output until its replacement arrives, and a forced
        # run that stops early leaves the rest up to date. The counter keeps cached answers
        # (is anything pending?) exact as the set changes.
        "m009_resend",
        """
        CREATE TABLE resend(key TEXT PRIMARY KEY, attempts INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE resend_shards(shard TEXT PRIMARY KEY);
        INSERT INTO counters(name, value) VALUES ('resend', 0);
        """
        + "".join(
            f"""
        CREATE TRIGGER resend_{op[:3].lower()} AFTER {op} ON resend BEGIN
            UPDATE counters SET value=value+1 WHERE name='resend';
        END;"""
            for op in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
    (
        # Each input's content-defined chunks (gptbatch.inputs.chunks): where each starts
        # (bytes, line, ordinal of its first request), its lines and requests, and its hash.
        # A sync of a changed input reads only the chunks whose hash changed; the requests of
        # the others are kept, shifted by one statement per run of them. Per output file,
        # the bytes (and index entries) each chunk's requests made, by the signature of
        # their outcomes: a rewrite copies those of chunks whose signature is the same.
        "m010_input_chunks",
        """
        CREATE TABLE input_chunks(
            path TEXT NOT NULL, seq INTEGER NOT NULL, first_ordinal INTEGER NOT NULL,
            first_line INTEGER NOT NULL, start INTEGER NOT NULL, length INTEGER NOT NULL,
            lines INTEGER NOT NULL, rows INTEGER NOT NULL, hash BLOB NOT NULL,
            PRIMARY KEY(path, seq)) WITHOUT ROWID;
        CREATE TABLE output_segments(
            output TEXT NOT NULL, signature BLOB NOT NULL, start INTEGER NOT NULL,
            length INTEGER NOT NULL, first_entry INTEGER NOT NULL, entries INTEGER NOT NULL,
            PRIMARY KEY(output, signature)) WITHOUT ROWID;
        """,
    ),
    (
        # Results are written a batch at a time (ResultsMixin.write_results): the versions,
        # the results counter and the requests' outcomes (done, result_version) are set by
        # one statement each per batch, not by triggers run for every row (half the time of
        # recording a batch's results). A request's outcome no longer bumps the requests
        # counter: every write that changes one bumps the results counter in the same
        # transaction (per batch, or by results_upd / results_del), which is what cached
        # answers and outputs_fingerprint read. Updates and deletes of results (rare: a
        # forced rebuild, gc) keep their triggers.
        "m011_batched_results",
        """
        DROP TRIGGER results_ins;
        DROP TRIGGER results_done_ins;
        DROP TRIGGER requests_upd;
        CREATE TRIGGER requests_upd AFTER UPDATE OF path, ordinal, length, key, custom_id,
            model, url, tokens, nbytes, inputs, cost, reason, digest ON requests BEGIN
            UPDATE counters SET value=value+1 WHERE name='requests';
        END;
        """,
    ),
    (
        # Requests failed for good, by input: with requests_open (done=0) and each input's
        # request count, the counts of a build's start and end are read from these small
        # indexes instead of a walk over every request (a second at a million).
        "m012_requests_failed",
        """
        CREATE INDEX requests_failed ON requests(path, ordinal) WHERE done=2;
        UPDATE inputs SET requests=(SELECT count(*) FROM requests r WHERE r.path=inputs.path);
        """,
    ),
    (
        # A request's offset is stored relative to its chunk's start (rows.ABSOLUTE_OFFSET):
        # an edit that moves the bytes after it rewrites the starts of the chunks after it,
        # not every request row after it (half a million rows and ~100 MB of WAL for an
        # edit in the middle of a million). The index finds a request's chunk by ordinal.
        "m013_chunk_relative_offsets",
        """
        CREATE INDEX input_chunks_ordinal ON input_chunks(path, first_ordinal, rows, start);
        UPDATE requests SET offset=offset-(SELECT c.start FROM input_chunks c
            WHERE c.path=requests.path AND c.rows>0 AND c.first_ordinal<=requests.ordinal
            ORDER BY c.first_ordinal DESC LIMIT 1)
        WHERE EXISTS (SELECT 1 FROM input_chunks c WHERE c.path=requests.path AND c.rows>0
            AND c.first_ordinal<=requests.ordinal);
        """,
    ),
    (
        # An output is written by joining each request with its result through the result's
        # version (requests.result_version): versions grow as results are written, batch
        # after batch in input order, so the join reads this index nearly in order where
        # the key index was read at random (2.7 s instead of 6 s for 1M results).
        "m014_results_version",
        """
        CREATE INDEX results_version ON results(version);
        """,
    ),
    (
        # A plan reads the open requests and skips those a shard at the API holds: one
        # lookup of each key in the members' index. With the shard in the index, that
        # lookup reads no member row (a third less time per plan at 1M: 1.7 s to 1.15 s for
        # the pending totals, 0.8 s to 0.5 s to the first free request).
        "m015_members_key_shard",
        """
        CREATE INDEX members_key_shard ON members(key, shard);
        DROP INDEX members_key;
        """,
    ),
)


def _statements(sql: str) -> Iterator[str]:
    """The statements of a migration, trigger bodies (with their inner ;) kept whole."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations db has not had yet (the caller holds a write transaction)."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations(name TEXT PRIMARY KEY)")
    done = {r[0] for r in db.execute("SELECT name FROM migrations")}
    known = {name for name, _ in MIGRATIONS}
    if done - known:
        raise StateError(
            f"{path} was written by a newer gptbatch ({sorted(done - known)}): "
            "upgrade gptbatch, or use another output_dir"
        )
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        for statement in _statements(sql):
            db.execute(statement)
        db.execute("INSERT INTO migrations(name) VALUES (?)", (name,))
