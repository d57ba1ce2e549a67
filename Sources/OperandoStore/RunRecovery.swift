import Foundation
import OperandoCore
import OperandoIO

/// Closes a run that the daemon never closed (killed, crashed, power lost).
///
/// Every segment is read and every record's CRC checked. A torn tail — the last write cut short —
/// is cut off, so the segment ends on its last whole record again; a damaged record in the middle
/// is skipped and counted. The per-stream counts are rebuilt from the sequence numbers (a gap is a
/// drop, as always), the run ends at its last record, and the manifest is rewritten with state
/// `recovered` and a `recovery` report. Nothing that was on disk as a whole record is removed.
public enum RunRecovery {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Directories of runs under `dataDirectory/runs` whose manifest still says "recording".
    public static func unfinishedRuns(in dataDirectory: String) -> [String] {
        let root = dataDirectory + "/runs"
        return ((try? FileSystem.list(root)) ?? []).sorted().compactMap { name in
            let dir = root + "/" + name
            guard let m = try? RunManifest.load(dir + "/run.json"), m.state == .recording else { return nil }
            return dir
        }
    }

    /// Recovers the run in `directory`. Refuses a run that is not marked recording unless `force`
    /// (then it re-verifies and rewrites the counts of a closed run, e.g. after disk damage).
    ///
    /// - Parameters:
    ///   - by: who recovers, for the report ("daemon start", "operandoctl recover").
    ///   - at: the time of recovery, for the report.
    public static func recover(_ directory: String, by: String, at: RealtimeAnchor, force: Bool = false) throws -> RunManifest {
        let manifestPath = directory + "/run.json"
        guard FileSystem.exists(manifestPath) else {
            throw Failure(description: "\(directory) is not a run directory (no run.json)")
        }
        var manifest: RunManifest
        do {
            manifest = try RunManifest.load(manifestPath)
        } catch {
            throw Failure(description: "\(manifestPath) cannot be read (\(error)); the segments are intact, but the run's stream descriptors are in run.json")
        }
        guard manifest.state == .recording || force else {
            throw Failure(description: "run \(manifest.name) is \(manifest.state.rawValue), not recording: there is nothing to recover (force re-verifies it)")
        }
        let names = ((try? FileSystem.list(directory + "/segments")) ?? []).filter { $0.hasSuffix(".seg") }.sorted()
        var count = [UInt32: UInt64]()
        var bytes = [UInt32: UInt64]()
        var first = [UInt32: UInt64]()
        var last = [UInt32: UInt64]()
        var lastAnchor: RealtimeAnchor?
        var lastHost: HostInstant?
        var report = RecoveryReport(
            recoveredAt: RunManifest.iso8601(at.utcNanoseconds), by: by, tornBytesRemoved: [:], damaged: [], records: 0,
            unreadableSegments: [:])
        let decoder = JSONDecoder()
        var readable = 0
        for name in names {
            let path = directory + "/segments/" + name
            let scan: SegmentScan
            do {
                scan = try SegmentReader.read(path) { r in
                    switch r.header.kind {
                    case .data, .event:
                        let id = r.header.streamID
                        count[id, default: 0] += 1
                        bytes[id, default: 0] += UInt64(RecordLayout.recordSize(payloadBytes: r.payload.count))
                        if first[id] == nil { first[id] = r.header.sequence }
                        last[id] = max(last[id] ?? 0, r.header.sequence)
                        lastHost = max(lastHost ?? r.header.hostTime, r.header.hostTime)
                    case .anchor:
                        if let a = try? decoder.decode(RealtimeAnchor.self, from: Data(r.payload)) { lastAnchor = a }
                    default:
                        break
                    }
                }
            } catch {
                report.unreadableSegments[name] = "\(error)"
                continue
            }
            readable += 1
            report.records += scan.records
            for d in scan.damaged { report.damaged.append(.init(segment: name, offset: d.offset, length: d.length)) }
            if scan.tornTailBytes > 0 {
                let fd = try FileDescriptor.open(path, flags: O_WRONLY)
                defer { fd.close() }
                try fd.truncate(to: scan.validEnd)
                try fd.sync()
                report.tornBytesRemoved[name] = scan.tornTailBytes
            }
        }
        manifest.summary = manifest.streams.map { s in
            let written = count[s.id] ?? 0
            let span = first[s.id].map { last[s.id]! - $0 + 1 } ?? 0
            return StreamCounts(name: s.name, produced: max(span, written), written: written, dropped: max(span, written) - written, bytes: bytes[s.id] ?? 0)
        }
        // The run ends at its last record, placed in UTC through the last anchor before it.
        if let end = lastHost ?? lastAnchor?.host {
            let anchor = lastAnchor ?? manifest.startAnchor
            let utc = anchor.utcNanoseconds(for: end)
            manifest.stopAnchor = RealtimeAnchor(before: end, after: end, utcNanoseconds: utc, taiOffsetSeconds: anchor.taiOffsetSeconds)
            manifest.stoppedAt = RunManifest.iso8601(utc)
        }
        if manifest.state == .recording {
            manifest.stopReason = "recovered: the daemon stopped without closing the run (killed, crashed or lost power); the run ends at its last whole record"
        }
        manifest.state = .recovered
        manifest.segments = readable
        manifest.recovery = report
        try FileSystem.writeAtomically(manifestPath, bytes: manifest.encoded())
        return manifest
    }
}
