import Foundation
import OperandoCore
import OperandoIO
import Synchronization
import XCTest
import ZaberSimulator

/// A host clock the test moves by hand: simulated motion time comes from here, never from sleeps.
private final class ManualClock: HostClock {
    private let nanoseconds = Mutex<Int64>(1_000_000_000)

    func now() -> HostInstant { HostInstant(nanoseconds: nanoseconds.withLock { $0 }) }

    func advance(seconds: Double) { nanoseconds.withLock { $0 += Int64((seconds * 1e9).rounded()) } }

    func realtimeAnchor() -> RealtimeAnchor {
        let t = now()
        return RealtimeAnchor(before: t, after: t, utcNanoseconds: t.nanoseconds, taiOffsetSeconds: 0)
    }
}

/// A simulated chain served on its own thread over an in-memory cable; the test is the host.
private final class Bench {
    let clock = ManualClock()
    let link: InMemoryLink
    let simulator: ZaberSimulator
    private let host: any ByteStreamTransport
    private let stopFlag = StopFlag()
    private var thread: IOThread?
    private var received: [UInt8] = []

    init(devices: [ZaberSimulator.Device]) {
        link = InMemoryLink(clock: clock)
        host = link.hostByteStream
        simulator = ZaberSimulator(devices: devices, clock: clock, seed: 7)
        let device = link.deviceByteStream
        let simulator = simulator
        let stop = stopFlag
        thread = IOThread(name: "zaber-sim-test") { simulator.serve(device, shouldStop: { stop.isSet }) }
    }

    func stop() {
        stopFlag.set()
        thread?.join()
        thread = nil
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { try! host.write($0, timeout: .seconds(5)) }
    }

    /// The next line the chain sends, without its `\r\n`. Waits for it (a guard against a hang,
    /// not a timing assertion: the simulated time is the manual clock's).
    func line(file: StaticString = #filePath, line: UInt = #line) -> String {
        var buffer = [UInt8](repeating: 0, count: 512)
        for _ in 0..<100 {
            if let end = received.indices.dropLast().first(where: { received[$0] == 0x0D && received[$0 + 1] == 0x0A }) {
                let text = String(decoding: received[..<end], as: UTF8.self)
                received.removeFirst(end + 2)
                return text
            }
            let n = buffer.withUnsafeMutableBytes { (try? host.read(into: $0, timeout: .milliseconds(100)))?.count ?? 0 }
            received += buffer[0..<n]
        }
        XCTFail("no complete line from the simulator; got \(String(decoding: received, as: UTF8.self).debugDescription)", file: file, line: line)
        return ""
    }

    /// Sends one command and returns the first line that comes back.
    func ask(_ command: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        send(command + "\n")
        return self.line(file: file, line: line)
    }

    /// The data field of the reply to `command` (everything after the warning flag).
    func data(_ command: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        let reply = ask(command, file: file, line: line)
        return reply.split(separator: " ", maxSplits: 5).dropFirst(5).first.map(String.init) ?? ""
    }
}

/// Tells the serving thread to return.
private final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}

final class ZaberSimulatorTests: XCTestCase {
    /// A stage whose numbers make motion times easy to compute: maxspeed 16 384 (10 000 µsteps/s),
    /// accel 16 (97 656.25 µsteps/s²: 0.1024 s and 512 µsteps to reach full speed), travel 0…100 000.
    /// A move of D µsteps from rest at full speed lasts D / 10 000 + 0.1024 s.
    private static func axis(powerUp: Int64 = 0) -> ZaberSimulator.Axis {
        ZaberSimulator.Axis(
            limitMax: 100_000, microstepSizeMicrometres: 0.1, maxspeed: 16_384, accel: 16, limitApproachMaxspeed: 16_384,
            powerUpPosition: powerUp, encoderNoiseCounts: 0)
    }

    private static func device(serial: Int = 1001, axes: [ZaberSimulator.Axis] = [axis()]) -> ZaberSimulator.Device {
        ZaberSimulator.Device(deviceID: 50081, serialNumber: serial, axes: axes)
    }

    private var bench: Bench!

    private func start(_ devices: [ZaberSimulator.Device] = [device()]) -> Bench {
        bench = Bench(devices: devices)
        return bench
    }

    override func tearDown() {
        bench?.stop()
        bench = nil
        super.tearDown()
    }

    /// Homes every axis of device 1 (instant from power-up position 0) so replies carry no WR flag.
    private func homed(_ b: Bench) {
        XCTAssertEqual(b.ask("/1 home"), "@01 0 OK IDLE -- 0")
    }

    // MARK: Framing, checksums, ids

    func testChecksum_matchesZprotoVector() {
        XCTAssertEqual(ZaberChecksum.of(Array("01 tools echo".utf8)), 143)
        XCTAssertEqual(ZaberChecksum.hex(143), "8F")
    }

    func testCommand_withCorrectChecksum_isAnswered() {
        let b = start()
        XCTAssertEqual(b.ask("/01 tools echo:8F"), "@01 0 OK IDLE WR 0")
    }

    func testCommand_withBadChecksum_rejectsWithBADDATA() {
        let b = start()
        XCTAssertEqual(b.ask("/01 tools echo:8E"), "@01 0 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/01 tools echo:ZZ"), "@01 0 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/01 tools echo hi"), "@01 0 OK IDLE WR hi")
    }

    func testMessageID_isEchoedInReplyAndRejection() {
        let b = start()
        XCTAssertEqual(b.ask("/1 1 42 get pos"), "@01 1 42 OK IDLE WR 0")
        XCTAssertEqual(b.ask("/1 0 07 fly"), "@01 0 07 RJ IDLE WR BADCOMMAND")
        XCTAssertEqual(b.ask("/0 0 00:00"), "@01 0 00 OK IDLE WR 0")  // zaber-motion's discovery packet
    }

    func testMessageID_over99_rejectsWithBADMESSAGEID() {
        let b = start()
        XCTAssertEqual(b.ask("/1 1 100 get pos"), "@01 1 RJ IDLE WR BADMESSAGEID")
    }

    func testCarriageReturnAndCRLF_terminateCommands() {
        let b = start()
        b.send("/1 1 1 get pos\r/1 1 2 get pos\r\n")
        XCTAssertEqual(b.line(), "@01 1 1 OK IDLE WR 0")
        XCTAssertEqual(b.line(), "@01 1 2 OK IDLE WR 0")
    }

    func testGarbageOnTheLine_doesNotBreakLaterCommands() {
        let b = start()
        b.send([0x00, 0xFF, 0x41, 0x0D, 0x0A])  // noise outside any packet
        b.send("/1 ge\u{01}t pos\n")  // a control byte kills the packet being received
        b.send("/1 get po\u{7F}")  // DEL discards it too
        b.send("@01 0 OK IDLE -- 0\r\n")  // another device's reply is not a command
        XCTAssertEqual(b.ask("/1 1 9 get pos"), "@01 1 9 OK IDLE WR 0")
    }

    func testCommand_arrivingOneByteAtATime_isAnswered() {
        let b = start()
        for byte in "/1 1 3 get limit.max\n".utf8 { b.send([byte]) }
        XCTAssertEqual(b.line(), "@01 1 3 OK IDLE WR 100000")
    }

    func testUnknownDevice_staysSilent() {
        let b = start()
        b.send("/5 get pos\n")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE WR 0")
    }

    func testBroadcast_twoDevicesAnswerInChainOrder() {
        let b = start([Self.device(serial: 1001), Self.device(serial: 1002)])
        b.send("/0 0 11 get system.serial\n")
        XCTAssertEqual(b.line(), "@01 0 11 OK IDLE WR 1001")
        XCTAssertEqual(b.line(), "@02 0 11 OK IDLE WR 1002")
        b.send("/\n")
        XCTAssertEqual(b.line(), "@01 0 OK IDLE WR 0")
        XCTAssertEqual(b.line(), "@02 0 OK IDLE WR 0")
    }

    func testCommChecksum_appendsChecksumToReplies() {
        let b = start()
        XCTAssertEqual(b.ask("/1 set comm.checksum 1"), "@01 0 OK IDLE WR 0:\(ZaberChecksum.hex(ZaberChecksum.of(Array("01 0 OK IDLE WR 0".utf8))))")
    }

    // MARK: Rejections

    func testUnknownCommand_rejectsWithBADCOMMAND() {
        let b = start()
        XCTAssertEqual(b.ask("/1 0 fly away"), "@01 0 RJ IDLE WR BADCOMMAND")
        XCTAssertEqual(b.ask("/1 0 get no.such.setting"), "@01 0 RJ IDLE WR BADCOMMAND")
        XCTAssertEqual(b.ask("/1 0 set version 8"), "@01 0 RJ IDLE WR BADCOMMAND")
    }

    func testMoveAbs_whenOutsideTravel_rejectsWithBADDATA() {
        let b = start()
        XCTAssertEqual(b.ask("/1 1 move abs 100001"), "@01 1 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 1 move abs -1"), "@01 1 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 1 move abs ten"), "@01 1 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 1 move rel 100001"), "@01 1 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE WR 0")
    }

    func testGet_onAxisTheDeviceLacks_rejectsWithBADAXIS() {
        let b = start()
        XCTAssertEqual(b.ask("/1 2 5 get pos"), "@01 2 5 RJ IDLE WR BADAXIS")
    }

    func testGetDeviceSetting_onAxis_rejectsWithDEVICEONLY() {
        let b = start()
        XCTAssertEqual(b.ask("/1 1 get system.serial"), "@01 1 RJ IDLE WR DEVICEONLY")
        XCTAssertEqual(b.ask("/1 0 get system.serial"), "@01 0 OK IDLE WR 1001")
    }

    func testSetPos_whileMoving_rejectsWithSTATUSBUSY() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 50000"), "@01 1 OK BUSY -- 0")
        XCTAssertEqual(b.ask("/1 1 set pos 10"), "@01 1 RJ BUSY -- STATUSBUSY")
    }

    // MARK: Motion

    func testMoveAbs_becomesIdleAfterTrapezoidTime() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 10000"), "@01 1 OK BUSY -- 0")
        // 10 000 µsteps at 10 000 µsteps/s plus one ramp (0.1024 s): 1.1024 s; halfway at 0.5512 s.
        b.clock.advance(seconds: 0.5512)
        XCTAssertEqual(Double(b.data("/1 1 get pos"))!, 5000, accuracy: 1)
        b.clock.advance(seconds: 0.550)
        XCTAssertEqual(b.ask("/1 1"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 0.002)
        XCTAssertEqual(b.ask("/1 1"), "@01 1 OK IDLE -- 0")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE -- 10000")
    }

    func testShortMove_isTriangular() {
        let b = start()
        homed(b)
        // 512 µsteps never reach full speed: accelerate over 256, brake over 256: 2·√(256/(a/2)) s.
        let duration = 2 * (2 * 256 / 97_656.25).squareRoot()
        XCTAssertEqual(b.ask("/1 1 move rel 512"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: duration - 0.001)
        XCTAssertEqual(b.ask("/1 1"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 0.002)
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE -- 512")
    }

    func testHome_clearsWR_andZeroesPosition() {
        let b = start([Self.device(axes: [Self.axis(powerUp: 5000)])])
        XCTAssertEqual(b.ask("/1 1 warnings"), "@01 1 OK IDLE WR 01 WR")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE WR 5000")
        XCTAssertEqual(b.ask("/1 1 home"), "@01 1 OK BUSY WR 0")
        // 5000 µsteps at 10 000 µsteps/s plus one ramp: 0.6024 s.
        b.clock.advance(seconds: 0.601)
        XCTAssertEqual(b.ask("/1 1"), "@01 1 OK BUSY WR 0")
        b.clock.advance(seconds: 0.002)
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE -- 0")
        XCTAssertEqual(b.ask("/1 1 warnings"), "@01 1 OK IDLE -- 00")
    }

    func testWarningsClear_keepsWR_whileUnhomed() {
        let b = start()
        XCTAssertEqual(b.ask("/1 warnings clear"), "@01 0 OK IDLE WR 01 WR")
        XCTAssertEqual(b.ask("/1 warnings"), "@01 0 OK IDLE WR 01 WR")
    }

    func testStop_interruptingMove_decelerates_andRaisesNI() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 50000"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 1.0)  // cruising at 10 000 µsteps/s, at 10 000 - 512 = 9488
        XCTAssertEqual(b.ask("/1 1 stop"), "@01 1 OK BUSY NI 0")
        b.clock.advance(seconds: 0.1025)  // the brake ramp: another 512 µsteps
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE NI 10000")
        XCTAssertEqual(b.ask("/1 1 warnings clear"), "@01 1 OK IDLE -- 01 NI")
        XCTAssertEqual(b.ask("/1 1 move rel 1"), "@01 1 OK BUSY -- 0")
    }

    func testEstop_haltsAtOnce() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 50000"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 1.0)
        XCTAssertEqual(b.ask("/1 1 estop"), "@01 1 OK BUSY NI 0")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE NI 9488")
    }

    func testMoveVel_stopsAtLimitMax_withoutFault() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move vel 16384"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 10.1025)  // 100 000 µsteps at full speed plus one ramp
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE -- 100000")
    }

    func testNewMove_interruptingMove_replansFromCurrentState() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 50000"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 1.0)
        XCTAssertEqual(b.ask("/1 1 move abs 20000"), "@01 1 OK BUSY NI 0")
        b.clock.advance(seconds: 5)
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE NI 20000")
    }

    func testAxisZero_ofTwoAxisDevice_getsOneValuePerAxis_andMovesBoth() {
        let b = start([Self.device(axes: [Self.axis(powerUp: 0), Self.axis(powerUp: 0)])])
        XCTAssertEqual(b.ask("/1 0 home"), "@01 0 OK IDLE -- 0")
        XCTAssertEqual(b.ask("/1 0 get maxspeed"), "@01 0 OK IDLE -- 16384 16384")
        XCTAssertEqual(b.ask("/1 2 set maxspeed 8192"), "@01 2 OK IDLE -- 0")
        XCTAssertEqual(b.ask("/1 0 move abs 1000"), "@01 0 OK BUSY -- 0")
        b.clock.advance(seconds: 1)
        XCTAssertEqual(b.ask("/1 0 get pos"), "@01 0 OK IDLE -- 1000 1000")
        XCTAssertEqual(b.ask("/1 0 get system.axiscount"), "@01 0 OK IDLE -- 2")
    }

    func testAlert_whenCommAlertOn_reportsIdleAfterMove() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 set comm.alert 1"), "@01 0 OK IDLE -- 0")
        XCTAssertEqual(b.ask("/1 1 move abs 1000"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 0.3)  // 0.2024 s
        XCTAssertEqual(b.line(), "!01 1 IDLE --")
        XCTAssertEqual(b.ask("/1 1 get pos"), "@01 1 OK IDLE -- 1000")
    }

    func testInjectedStall_raisesFS_untilCleared() {
        let b = start()
        homed(b)
        XCTAssertEqual(b.ask("/1 1 move abs 50000"), "@01 1 OK BUSY -- 0")
        b.clock.advance(seconds: 0.5)
        b.simulator.injectStall(chainIndex: 0, axis: 1)
        XCTAssertEqual(b.ask("/1 1"), "@01 1 OK IDLE FS 0")
        XCTAssertEqual(b.ask("/1 1 warnings clear"), "@01 1 OK IDLE -- 01 FS")
    }

    // MARK: Long messages, other commands

    func testSplitCommand_andLongReply_roundTrip() {
        let b = start()
        b.send("/1 0 4 storage set note one two three\\:\(sum("1 0 4 storage set note one two three\\"))\n")
        b.send("/1 0 4 cont 1 four five six seven eight nine ten eleven twelve thirteen\n")
        XCTAssertEqual(b.line(), "@01 0 4 OK IDLE WR 0")  // one reply, to the last packet
        b.send("/1 0 5 storage get note\n")
        // 80-byte packets: the reply ends `\` and continues in an info packet with the same id.
        XCTAssertEqual(b.line(), "@01 0 5 OK IDLE WR one two three four five six seven eight nine ten eleven\\")
        XCTAssertEqual(b.line(), "#01 0 5 cont twelve thirteen")
    }

    func testContinuation_withoutStart_rejectsWithBADSPLIT() {
        let b = start()
        XCTAssertEqual(b.ask("/1 0 6 cont 1 words"), "@01 0 6 RJ IDLE WR BADSPLIT")
    }

    func testSplitCommand_overPacketLimit_isRejectedOnce() {
        let b = start()
        b.send("/1 0 8 tools echo a\\\n/1 0 8 cont 1 b\\\n/1 0 8 cont 2 c\\\n/1 0 8 cont 3 d\\\n")
        b.send("/1 0 8 cont 4 e\\\n")
        XCTAssertEqual(b.line(), "@01 0 8 RJ IDLE WR BADSPLIT")  // a 6th packet was announced; 5 is the most
        b.send("/1 0 8 cont 5 f\n")  // swallowed
        XCTAssertEqual(b.ask("/1 0 9 tools echo ok"), "@01 0 9 OK IDLE WR ok")
    }

    func testRenumber_givesChainPositions_andSetsAnAddress() {
        let b = start([Self.device(serial: 1), Self.device(serial: 2)])
        b.send("/1 renumber 7\n")
        XCTAssertEqual(b.line(), "@07 0 OK IDLE WR 0")
        XCTAssertEqual(b.ask("/7 get system.serial"), "@07 0 OK IDLE WR 1")
        b.send("/renumber\n")
        XCTAssertEqual(b.line(), "@01 0 OK IDLE WR 0")
        XCTAssertEqual(b.line(), "@02 0 OK IDLE WR 0")
        b.send("/0 0 04 renumber 5\n")  // zaber-motion's renumber_devices: number the chain from 5
        XCTAssertEqual(b.line(), "@05 0 04 OK IDLE WR 0")
        XCTAssertEqual(b.line(), "@06 0 04 OK IDLE WR 0")
    }

    func testStorageSet_withoutValue_rejectsWithBADDATA() {
        let b = start()
        XCTAssertEqual(b.ask("/1 storage set key"), "@01 0 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 storage get key"), "@01 0 RJ IDLE WR BADDATA")
        XCTAssertEqual(b.ask("/1 1 storage set key v"), "@01 1 RJ IDLE WR DEVICEONLY")
        XCTAssertEqual(b.ask("/1 1 storage axis set key v"), "@01 1 OK IDLE WR 0")
        XCTAssertEqual(b.ask("/1 1 storage axis get key"), "@01 1 OK IDLE WR v")
    }

    func testIdentificationQueries_answerLikeFirmware7() {
        let b = start()
        XCTAssertEqual(b.data("/1 0 get deviceid"), "50081")
        XCTAssertEqual(b.data("/1 0 get device.id"), "50081")
        XCTAssertEqual(b.data("/1 0 get version"), "7.33")
        XCTAssertEqual(b.data("/1 0 get version.build"), "14091")
        XCTAssertEqual(b.data("/1 0 get comm.packet.size.max"), "80")
        XCTAssertEqual(b.data("/1 1 get resolution"), "64")
        XCTAssertEqual(b.ask("/1 1 get peripheralid"), "@01 1 RJ IDLE WR BADCOMMAND")  // integrated stage
        XCTAssertEqual(b.ask("/1 0 get get.settings.max"), "@01 0 RJ IDLE WR BADCOMMAND")  // before 7.35
    }

    // MARK: Over a pseudo-terminal

    func testPseudoTerminal_servesSimulatorToClientsOfItsLink_andDropsWhatTheyLeftUnread() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("zaber-pty-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let linkPath = directory + "/zaber0"
        let clock = ManualClock()
        let terminal = try PseudoTerminal(linkPath: linkPath, clock: clock)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: linkPath), terminal.slavePath)
        let simulator = ZaberSimulator(devices: [Self.device()], clock: clock)
        let stop = StopFlag()
        let thread = IOThread(name: "zaber-pty-test") { simulator.serve(terminal, shouldStop: { stop.isSet }) }
        defer {
            stop.set()
            thread.join()
        }

        // A client that sends a command and closes without reading the reply.
        let first = try FileDescriptor.open(linkPath, flags: O_RDWR | O_NOCTTY)
        try first.writeAll(Array("/1 1 1 get pos\n".utf8))
        XCTAssertTrue(try first.pollReadable(timeoutMilliseconds: 5000), "no reply over the pseudo-terminal")
        XCTAssertEqual(terminal.clientCount, 1)
        first.close()
        // The terminal flushes once it sees the close; a client opening within that instant could
        // still read the leftover (see PseudoTerminal), so wait for it (bounded: no time assertion).
        for _ in 0..<1_000_000 where terminal.clientCount != 0 { ThreadSleep.yield() }
        XCTAssertEqual(terminal.clientCount, 0)

        // The next client sees only the reply to its own command.
        let second = try FileDescriptor.open(linkPath, flags: O_RDWR | O_NOCTTY)
        defer { second.close() }
        var reply: [UInt8] = []
        for _ in 0..<50 where reply.last != 0x0A {
            try second.writeAll(Array("/1 1 2 get pos\n".utf8))
            guard try second.pollReadable(timeoutMilliseconds: 200) else { continue }  // sent before the flush: again
            var chunk = [UInt8](repeating: 0, count: 256)
            while reply.last != 0x0A, try second.pollReadable(timeoutMilliseconds: 1000) {
                let n = try chunk.withUnsafeMutableBytes { try second.read(into: $0) }
                reply += chunk[0..<n]
            }
        }
        XCTAssertEqual(String(decoding: reply, as: UTF8.self).split(separator: "\r\n").first, "@01 1 2 OK IDLE WR 0")

        terminal.close()
        XCTAssertFalse(FileManager.default.fileExists(atPath: linkPath), "close left the link behind")
    }

    /// The checksum of `content` as two hex digits.
    private func sum(_ content: String) -> String { ZaberChecksum.hex(ZaberChecksum.of(Array(content.utf8))) }
}
