import Foundation
import Logging
import OperandoBuffers
import OperandoCore
import OperandoIO
import Synchronization
import XCTest

@testable import OperandoStore

/// A clock the test moves by hand.
final class ManualClock: HostClock, @unchecked Sendable {
    private let value = Mutex<Int64>(1_000_000_000)
    func now() -> HostInstant { HostInstant(nanoseconds: value.withLock { $0 }) }
    func advance(_ ns: Int64) { value.withLock { $0 += ns } }
    func realtimeAnchor() -> RealtimeAnchor {
        let n = now()
        return RealtimeAnchor(before: n, after: n, utcNanoseconds: 1_700_000_000_000_000_000 + n.nanoseconds, taiOffsetSeconds: 37)
    }
}

final class RecorderTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "operando-store-\(UUID().uuidString)"
        try FileSystem.makeDirectories(directory)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func channel(_ id: UInt32, _ name: String, ring: Int = 1 << 16) -> StreamChannel {
        let d = StreamDescriptor(id: id, name: name, device: "t", kind: .samples, elementType: .uint64, fields: [Field("n", unit: "1")], shape: [1], nominalRateHz: 100, maxPayloadBytes: 8)
        return StreamChannel(descriptor: d, ringBytes: ring, policy: .block, backoff: { ThreadSleep.sleep(.microseconds(20)) })
    }

    private func manifest(_ channels: [StreamChannel], clock: any HostClock) -> RunManifest {
        RunManifest(id: UUID().uuidString, name: "test run", metadata: ["k": .string("v")], startAnchor: clock.realtimeAnchor(), startReason: "test", streams: channels.map(\.descriptor),
                    provenance: Provenance(daemonVersion: "t", hostName: "h", configPath: "c", configText: "", devices: [], libraries: [:]), durability: "d")
    }

    private func waitUntil(_ what: String, _ condition: () -> Bool) {
        // Waits for a condition (not a time bound): fails only if it never happens.
        for _ in 0..<5000 where !condition() { ThreadSleep.sleep(.milliseconds(2)) }
        XCTAssertTrue(condition(), "never happened: \(what)")
    }

    private func readRun(_ runDirectory: String) throws -> (records: [StoredRecord], scans: [SegmentScan]) {
        var records: [StoredRecord] = []
        var scans: [SegmentScan] = []
        for name in try FileSystem.list(runDirectory + "/segments") {
            scans.append(try SegmentReader.read(runDirectory + "/segments/" + name) { records.append($0) })
        }
        return (records, scans)
    }

    private func stop(_ recorder: Recorder, at: HostInstant) -> RunManifest? {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<RunManifest?>(nil)
        recorder.stopRun(at: at, reason: "test stop") { r in
            result.withLock { $0 = try? r.get() }
            done.signal()
        }
        done.wait()
        return result.withLock { $0 }
    }

    /// Records pushed before the run are not in it; everything pushed during it is, with valid CRCs,
    /// contiguous sequences, descriptors and anchors; and the summary agrees with the files.
    func testRun_withTwoStreams_writesEveryRecordOfTheRunAndOnlyThose() throws {
        let clock = ManualClock()
        let a = channel(0, "t/a"), b = channel(1, "t/b")
        let recorder = Recorder(channels: [a, b], clock: clock, options: .init(stopGrace: .zero), logger: Logger(label: "test"))
        recorder.start()
        defer { recorder.shutdown(reason: "test end") }
        func push(_ c: StreamChannel, _ v: UInt64) { withUnsafeBytes(of: v) { _ = c.push(hostTime: clock.now(), deviceTime: Int64(v), payload: $0) } }

        for v in 0..<10 { push(a, UInt64(v)) }  // before the run
        waitUntil("pre-run records drained") { a.ring.usedBytes == 0 }
        clock.advance(1_000)
        let dir = try recorder.startRun(manifest: manifest([a, b], clock: clock), under: directory)
        clock.advance(1_000)
        for v in 10..<2010 {
            push(a, UInt64(v))
            if v % 2 == 0 { push(b, UInt64(v)) }
        }
        clock.advance(1_000)
        let stopAt = clock.now()
        clock.advance(1_000)
        push(a, 9999)  // after the stop instant: not part of the run
        let result = try XCTUnwrap(stop(recorder, at: stopAt))

        XCTAssertEqual(result.state, .complete)
        XCTAssertEqual(result.summary?.map(\.written), [2000, 1000])
        XCTAssertEqual(result.summary?.map(\.dropped), [0, 0])
        XCTAssertEqual(result.summary?.map(\.produced), [2000, 1000])

        let (records, scans) = try readRun(dir)
        XCTAssertEqual(scans.flatMap(\.damaged).count, 0)
        XCTAssertEqual(scans.map(\.tornTailBytes), [0])
        let data = records.filter { $0.header.kind == .data }
        let aValues = data.filter { $0.header.streamID == 0 }.map { $0.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } }
        XCTAssertEqual(aValues, Array(10..<2010).map(UInt64.init))
        let aSeqs = data.filter { $0.header.streamID == 0 }.map(\.header.sequence)
        XCTAssertEqual(aSeqs, Array(10..<2010).map(UInt64.init), "sequences contiguous")
        XCTAssertEqual(data.filter { $0.header.streamID == 1 }.count, 1000)
        XCTAssertEqual(records.filter { $0.header.kind == .descriptor }.count, 2)
        XCTAssertGreaterThanOrEqual(records.filter { $0.header.kind == .anchor }.count, 2, "an anchor at the start and at the stop")
        let descriptor = try JSONDecoder().decode(StreamDescriptor.self, from: Data(records.first { $0.header.kind == .descriptor }!.payload))
        XCTAssertEqual(descriptor.name, "t/a")
        let onDisk = try RunManifest.load(dir + "/run.json")
        XCTAssertEqual(onDisk.state, .complete)
        XCTAssertEqual(onDisk.summary, result.summary)
    }

    func testRotation_bySize_eachSegmentReadableOnItsOwn() throws {
        let clock = ManualClock()
        let a = channel(0, "t/a", ring: 1 << 20)
        let recorder = Recorder(channels: [a], clock: clock, options: .init(segmentBytes: 4096, claimBytes: 1024, stopGrace: .zero), logger: Logger(label: "test"))
        recorder.start()
        defer { recorder.shutdown(reason: "test end") }
        let dir = try recorder.startRun(manifest: manifest([a], clock: clock), under: directory)
        clock.advance(10)
        for v in 0..<1000 {
            withUnsafeBytes(of: UInt64(v)) { _ = a.push(hostTime: clock.now(), deviceTime: nil, payload: $0) }
            if v % 50 == 0 { waitUntil("drained") { a.ring.usedBytes == 0 } }
        }
        let result = try XCTUnwrap(stop(recorder, at: clock.now()))
        XCTAssertGreaterThan(result.segments, 3)
        var total = 0
        for name in try FileSystem.list(dir + "/segments") {
            var descriptors = 0
            let scan = try SegmentReader.read(dir + "/segments/" + name) { r in
                if r.header.kind == .descriptor { descriptors += 1 }
                if r.header.kind == .data { total += 1 }
            }
            XCTAssertEqual(descriptors, 1, "\(name) describes its stream")
            XCTAssertEqual(scan.damaged.count, 0)
        }
        XCTAssertEqual(total, 1000)
    }

    /// A segment older than `segmentDuration` is closed and a new one begins, whatever its size.
    func testRotation_byAge_startsANewSegmentWhenTheCurrentOneIsOld() throws {
        let clock = ManualClock()
        let a = channel(0, "t/a")
        let recorder = Recorder(channels: [a], clock: clock, options: .init(segmentDuration: .seconds(10), stopGrace: .zero), logger: Logger(label: "test"))
        recorder.start()
        defer { recorder.shutdown(reason: "test end") }
        let dir = try recorder.startRun(manifest: manifest([a], clock: clock), under: directory)
        for v in 0..<30 {
            clock.advance(1_000_000_000)  // 1 s per record
            withUnsafeBytes(of: UInt64(v)) { _ = a.push(hostTime: clock.now(), deviceTime: nil, payload: $0) }
            waitUntil("drained") { a.ring.usedBytes == 0 }
            waitUntil("the writer went round") { recorder.lastHeartbeat >= clock.now() }
        }
        let result = try XCTUnwrap(stop(recorder, at: clock.now()))
        XCTAssertEqual(result.segments, 4, "segments begin at 0, 10, 20 and 30 s")
        for name in try FileSystem.list(dir + "/segments") {
            var times: [Int64] = []
            try SegmentReader.read(dir + "/segments/" + name) { if $0.header.kind == .data { times.append($0.header.hostTime.nanoseconds) } }
            XCTAssertLessThan((times.max() ?? 0) - (times.min() ?? 0), 10_000_000_000, "\(name) holds at most 10 s of records")
        }
        XCTAssertEqual(try readRun(dir).records.filter { $0.header.kind == .data }.count, 30)
    }

    /// Large records are checksummed by the producer (wrapped ones too); what reaches disk verifies.
    /// With a deliberately wrong producer checksum every large record is reported damaged, which
    /// shows the writer relies on the producer's CRC rather than computing its own.
    func testLargeRecords_checksummedByTheProducer_verifyOnDisk_andAWrongChecksumIsCaught() throws {
        for (checksum, expectValid) in [(CRC32C.function, true), ({ @Sendable (_: UnsafeRawBufferPointer, _: UInt32) -> UInt32 in 0xDEAD_BEEF }, false)] {
            let clock = ManualClock()
            let d = StreamDescriptor(id: 0, name: "t/frames", device: "t", kind: .frames, elementType: .uint8, fields: [Field("b", unit: "1")], shape: [100_000], nominalRateHz: 1, maxPayloadBytes: 100_000)
            // Not a multiple of the record size: records wrap around the end at varying places.
            let channel = StreamChannel(descriptor: d, ringBytes: 350_008, policy: .block, backoff: { ThreadSleep.sleep(.microseconds(20)) }, checksum: checksum)
            let recorder = Recorder(channels: [channel], clock: clock, options: .init(stopGrace: .zero), logger: Logger(label: "test"))
            recorder.start()
            defer { recorder.shutdown(reason: "test end") }
            let dir = try recorder.startRun(manifest: manifest([channel], clock: clock), under: directory + (expectValid ? "/good" : "/bad"))
            clock.advance(10)
            for i in 0..<20 {
                let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
                payload.withUnsafeBytes { _ = channel.push(hostTime: clock.now(), deviceTime: nil, payload: $0) }
            }
            let result = try XCTUnwrap(stop(recorder, at: clock.now()))
            XCTAssertEqual(result.summary?.first?.written, 20)
            var valid = 0
            var scans: [SegmentScan] = []
            for name in try FileSystem.list(dir + "/segments") {
                scans.append(try SegmentReader.read(dir + "/segments/" + name) { r in if r.header.kind == .data { valid += 1 } })
            }
            if expectValid {
                XCTAssertEqual(valid, 20)
                XCTAssertEqual(scans.flatMap(\.damaged).count, 0)
            } else {
                XCTAssertEqual(valid, 0, "a wrong producer checksum must not pass")
            }
        }
    }

    func testStartRun_whileRecording_refuses() throws {
        let clock = ManualClock()
        let a = channel(0, "t/a")
        let recorder = Recorder(channels: [a], clock: clock, options: .init(stopGrace: .zero), logger: Logger(label: "test"))
        recorder.start()
        defer { recorder.shutdown(reason: "test end") }
        var m = manifest([a], clock: clock)
        _ = try recorder.startRun(manifest: m, under: directory)
        m.name = "second"
        XCTAssertThrowsError(try recorder.startRun(manifest: m, under: directory)) { error in
            XCTAssertTrue("\(error)".contains("already recording"), "\(error)")
        }
    }
}
