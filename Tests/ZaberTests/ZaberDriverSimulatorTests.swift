import Foundation
import OperandoCore
import OperandoIO
import Synchronization
import XCTest
import ZaberDriver
import ZaberSimulator

/// Collects what the driver pushes.
private final class Sink: RecordSink, @unchecked Sendable {
    let clock: any HostClock
    private let lock = Mutex<([(HostInstant, [Double])], [Event])>(([], []))
    init(clock: any HostClock) { self.clock = clock }
    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        let values = (0..<(payload.count / 8)).map { payload.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self) }
        lock.withLock { $0.0.append((hostTime, values)) }
    }
    func event(_ event: Event) { lock.withLock { $0.1.append(event) } }
    var samples: [(HostInstant, [Double])] { lock.withLock { $0.0 } }
    var events: [Event] { lock.withLock { $0.1 } }
}

/// Delivers at most one byte per read, to prove replies are framed regardless of read boundaries.
private final class OneByteAtATime: ByteStreamTransport, @unchecked Sendable {
    let inner: any ByteStreamTransport
    init(_ inner: any ByteStreamTransport) { self.inner = inner }
    var endpoint: String { inner.endpoint }
    func open() throws { try inner.open() }
    func close() { inner.close() }
    func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1]), timeout: timeout)
    }
    func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws { try inner.write(bytes, timeout: timeout) }
}

/// Level 2: the driver against the simulator (written apart from each other) over an in-memory link.
final class ZaberDriverSimulatorTests: XCTestCase {
    let clock = MonotonicRawClock()

    private func withSimulator(dripFed: Bool = false, _ body: (ZaberStageDriver, DeviceLink, Sink) throws -> Void) throws {
        let link = InMemoryLink(clock: clock)
        let simulator = ZaberSimulator(devices: ZaberSimulator.standard(count: 2), clock: clock)
        let stopped = Atomic<Bool>(false)
        let flag = StopFlagBox(stopped)
        let thread = IOThread(name: "zaber-sim") { simulator.serve(link.deviceByteStream, shouldStop: { flag.isSet }) }
        defer {
            flag.set()
            thread.join()
        }
        let driver = try ZaberStageDriver(name: "stage", settings: DeviceSettings(["device": .integer(2), "poll_hz": .integer(50)]))
        let host: any ByteStreamTransport = dripFed ? OneByteAtATime(link.hostByteStream) : link.hostByteStream
        try body(driver, .byteStream(host), Sink(clock: clock))
    }

    private func acquire(_ d: ZaberStageDriver, _ l: DeviceLink, _ s: Sink, until: () -> Bool) throws {
        for _ in 0..<2000 where !until() { try d.acquire(link: l, sink: s, budget: .milliseconds(20)) }
    }

    func testSetup_identifiesTheSecondDeviceOfTheChain() throws {
        try withSimulator { driver, link, sink in
            let identity = try driver.setup(link: link, sink: sink)
            XCTAssertTrue(identity.model.hasPrefix("Zaber device id"), identity.model)
            XCTAssertFalse(identity.firmware.isEmpty)
            XCTAssertNotEqual(identity.serialNumber, "unknown")
        }
    }

    func testMoveAndHome_recordStimuliPositionsAndCompletion() throws {
        try withSimulator { driver, link, sink in
            _ = try driver.setup(link: link, sink: sink)
            _ = try driver.perform(DeviceCommand(device: "stage", name: "home"), link: link, sink: sink)
            try acquire(driver, link, sink) { sink.events.contains { $0.message.contains("stopped moving") } }
            let result = try driver.perform(DeviceCommand(device: "stage", name: "move", arguments: ["position_um": .number(2000)]), link: link, sink: sink)
            XCTAssertEqual(result["microsteps"], .integer(Int64((2000 / driver.microstepMicrometres).rounded())))
            try acquire(driver, link, sink) { sink.samples.last.map { abs($0.1[0] - 2000) < 0.1 } ?? false }
            XCTAssertEqual(sink.samples.last?.1[0] ?? -1, 2000, accuracy: 0.1, "the position, in µm")
            let stimuli = sink.events.filter { $0.kind == .stimulus }
            XCTAssertEqual(stimuli.map { $0.values["command"] }, [.string("home"), .string("move abs")])
            XCTAssertEqual(sink.events.filter { $0.message.contains("stopped moving") }.count, 2)
            // Positions are stamped on the host timeline in order.
            XCTAssertEqual(sink.samples.map(\.0), sink.samples.map(\.0).sorted())
        }
    }

    func testMove_outsideTravel_isRejectedWithTheDevicesReason() throws {
        try withSimulator { driver, link, sink in
            _ = try driver.setup(link: link, sink: sink)
            XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "stage", name: "move", arguments: ["position_um": .number(1e9)]), link: link, sink: sink)) { error in
                XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
                XCTAssertTrue("\(error)".contains("BADDATA"), "\(error)")
            }
            XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "stage", name: "move", arguments: ["axis": .integer(5), "position_um": .number(1)]), link: link, sink: sink))
        }
    }

    func testRepliesDripFedOneByteAtATime_decodeTheSame() throws {
        try withSimulator(dripFed: true) { driver, link, sink in
            _ = try driver.setup(link: link, sink: sink)
            try acquire(driver, link, sink) { sink.samples.count >= 5 }
            XCTAssertGreaterThanOrEqual(sink.samples.count, 5)
            XCTAssertEqual(driver.malformedLines, 0)
        }
    }

    func testSilentDevice_setupTimesOutWithAClearError() throws {
        let link = InMemoryLink(clock: clock)
        let driver = try ZaberStageDriver(name: "stage", settings: DeviceSettings())
        XCTAssertThrowsError(try driver.setup(link: .byteStream(link.hostByteStream), sink: Sink(clock: clock))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .replyTimedOut)
            XCTAssertTrue("\(error)".contains("115200"), "\(error)")
        }
    }
}

final class StopFlagBox: Sendable {
    private let flag: Atomic<Bool>
    init(_ flag: consuming Atomic<Bool>) { self.flag = flag }
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
