import Foundation
import OperandoCore
import OperandoIO

/// Reads a run directory back: its manifest and the records of its segments, in order, each
/// CRC-checked. Works on complete runs, on runs still being written (the tail of the newest
/// segment may be incomplete: it is reported, not read), and on runs a crash left behind.
public struct RunReader: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// What reading the segments found besides good records.
    public struct Scan: Sendable {
        public var records = 0
        /// Damaged regions skipped in the middle of segments.
        public var damagedRegions = 0
        /// Bytes at segment ends that did not form a whole record.
        public var tornTailBytes = 0
    }

    public let directory: String
    public let manifest: RunManifest
    /// Segment files, oldest first.
    public let segmentPaths: [String]

    public init(directory: String) throws {
        self.directory = directory
        let manifestPath = directory + "/run.json"
        guard FileManager.default.fileExists(atPath: manifestPath) else {
            throw Failure(description: "\(directory) is not a run directory (no run.json); `operandoctl run list` shows the runs")
        }
        do {
            manifest = try RunManifest.load(manifestPath)
        } catch {
            throw Failure(description: "\(manifestPath) cannot be read: \(error)")
        }
        let names = ((try? FileSystem.list(directory + "/segments")) ?? []).filter { $0.hasSuffix(".seg") }.sorted()
        segmentPaths = names.map { directory + "/segments/" + $0 }
    }

    /// The descriptor of the stream called `name`.
    public func stream(named name: String) -> StreamDescriptor? { manifest.streams.first { $0.name == name } }

    /// Calls `body` for every data and event record of the streams in `streams` (every stream
    /// when nil), in the order they were written. Segments that cannot be read at all (a wrong
    /// magic, a missing file) are reported by throwing; damage inside a segment is skipped and
    /// counted in the returned scan. `progress`, when given, is called after each segment with
    /// the fraction (0…1) of the segments' bytes read so far.
    @discardableResult
    public func records(streams: Set<UInt32>? = nil, progress: ((Double) -> Void)? = nil, _ body: (StoredRecord) throws -> Void) throws -> Scan {
        var scan = Scan()
        let sizes = progress == nil ? [] : segmentPaths.map { path -> Int in
            var info = stat()
            return stat(path, &info) == 0 ? Int(info.st_size) : 0
        }
        let total = max(1, sizes.reduce(0, +))
        var done = 0
        for (index, path) in segmentPaths.enumerated() {
            let s = try SegmentReader.read(path) { r in
                guard r.header.kind == .data || r.header.kind == .event else { return }
                if let streams, !streams.contains(r.header.streamID) { return }
                try body(r)
            }
            scan.records += s.records
            scan.damagedRegions += s.damaged.count
            scan.tornTailBytes += s.tornTailBytes
            if let progress {
                done += sizes[index]
                progress(min(1, Double(done) / Double(total)))
            }
        }
        return scan
    }
}
