import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Self-tests of the emulated libusb devices of Tests/Support/umockdev-harness.py (--usb-device):
/// a small C program using the real libusb-1.0 (Tests/Support/usbprobe.c) runs under the harness
/// and is driven line by line, while the test unplugs, replugs, silences and corrupts devices.
final class USBHarnessSelfTests: XCTestCase {
    private var harnesses: [UmockdevHarness] = []

    override func tearDown() {
        for harness in harnesses { harness.stop() }
        harnesses = []
        super.tearDown()
    }

    /// Two Amptek-like devices with the same VID/PID, told apart by their serial numbers.
    private let amptek0 = EmulatedUSBDevice(
        name: "amptek0", vid: "10c4", pid: "842a", manufacturer: "Amptek", product: "PX5 DPP", serial: "DPP00001")
    private let amptek1 = EmulatedUSBDevice(
        name: "amptek1", vid: "10c4", pid: "842a", manufacturer: "Amptek", product: "PX5 DPP", serial: "DPP00002",
        endpoints: "01,82,83:int")

    // MARK: - Environment

    func testEnvironment_hasLibusbUmockdevAndACompiler() throws {
        try UmockdevHarness.requireEnvironment()
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: try USBProbe.path()))
    }

    // MARK: - Enumeration

    func testList_twoDevicesWithTheSameIds_haveTheirOwnSerialsDescriptorsAndEndpoints() throws {
        let probe = try startProbe([amptek0, amptek1])
        let devices = try probe.list()
        let amptek = devices.filter { $0["vid"] as? String == "10c4" && $0["pid"] as? String == "842a" }
        XCTAssertEqual(amptek.count, 2, "\(devices)")
        let bySerial = Dictionary(uniqueKeysWithValues: amptek.map { ($0["serial"] as? String ?? "?", $0) })
        XCTAssertEqual(Set(bySerial.keys), ["DPP00001", "DPP00002"])

        let first = try XCTUnwrap(bySerial["DPP00001"])
        XCTAssertEqual(first["bus"] as? Int, 1)
        XCTAssertEqual(first["address"] as? Int, 2)
        XCTAssertEqual(first["manufacturer"] as? String, "Amptek")
        XCTAssertEqual(first["product"] as? String, "PX5 DPP")
        XCTAssertEqual(first["class"] as? Int, 0)
        XCTAssertEqual(first["speed"] as? Int, 3, "LIBUSB_SPEED_HIGH (sysfs speed 480)")
        XCTAssertEqual(first["usb"] as? String, "2.00")
        XCTAssertEqual(first["max_packet0"] as? Int, 64)
        XCTAssertEqual(first["configurations"] as? Int, 1)
        let config = try XCTUnwrap(first["configuration"] as? [String: Any])
        XCTAssertEqual(config["value"] as? Int, 1)
        let interfaces = try XCTUnwrap(config["interfaces"] as? [[String: Any]])
        XCTAssertEqual(interfaces.count, 1)
        XCTAssertEqual(interfaces[0]["number"] as? Int, 0)
        XCTAssertEqual(interfaces[0]["class"] as? Int, 255)
        XCTAssertEqual(endpointSummary(interfaces[0]), ["02 bulk 512", "81 bulk 512"])

        let second = try XCTUnwrap(bySerial["DPP00002"])
        XCTAssertEqual(second["address"] as? Int, 3)
        let secondInterfaces = try XCTUnwrap((second["configuration"] as? [String: Any])?["interfaces"] as? [[String: Any]])
        XCTAssertEqual(endpointSummary(secondInterfaces[0]), ["01 bulk 512", "82 bulk 512", "83 interrupt 64/4"])

        let hubs = devices.filter { $0["class"] as? Int == 9 }
        XCTAssertEqual(hubs.count, 1, "one root hub for bus 1")
        XCTAssertEqual(hubs.first?["vid"] as? String, "1d6b")
        XCTAssertEqual(hubs.first?["address"] as? Int, 1)

        // Matching by serial reaches the right device: only amptek1's counters move.
        let echo = try probe.ok("echo \(amptek1.selector) 3 16 1")
        XCTAssertEqual(echo["transfers"] as? Int, 3)
        let status = try probe.harness.control("status")
        XCTAssertTrue(status.contains("amptek1=plugged,answering,busnum=1,devnum=3,devnode=/dev/bus/usb/001/003,inflight=0,served=6,in_bytes=48,out_bytes=48"), status)
        XCTAssertTrue(status.contains("amptek0=plugged,answering,busnum=1,devnum=2,devnode=/dev/bus/usb/001/002,inflight=0,served=0,in_bytes=0,out_bytes=0"), status)
    }

    func testReadyFileAndEnvironment_describeTheUSBDevices() throws {
        try UmockdevHarness.requireEnvironment()
        let harness = try UmockdevHarness(usbDevices: [amptek0], program: ["/bin/sh", "-c", "echo \"$OPERANDO_HARNESS_USB_DEVICES\"; sleep 30"])
        harnesses.append(harness)
        let ready = try harness.waitUntilReady()
        let devices = try XCTUnwrap(ready["devices"] as? [String: Any])
        let device = try XCTUnwrap(devices["amptek0"] as? [String: Any])
        XCTAssertEqual(device["kind"] as? String, "usb")
        XCTAssertEqual(device["vid"] as? String, "10c4")
        XCTAssertEqual(device["pid"] as? String, "842a")
        XCTAssertEqual(device["serial"] as? String, "DPP00001")
        XCTAssertEqual(device["busnum"] as? Int, 1)
        XCTAssertEqual(device["devnum"] as? Int, 2)
        XCTAssertEqual(device["devnode"] as? String, "/dev/bus/usb/001/002")
        XCTAssertEqual(harness.nextLine(), "amptek0=/dev/bus/usb/001/002")
    }

    func testTTYAndUSBDevices_coexistOnOneBus() throws {
        try UmockdevHarness.requireEnvironment()
        let harness = try UmockdevHarness(devices: [EmulatedSerialDevice(serial: "A10K1ABC")], usbDevices: [amptek0],
                                          program: [try USBProbe.path()])
        harnesses.append(harness)
        try harness.waitUntilReady()
        let probe = USBProbeSession(harness: harness)
        let devices = try probe.list()
        let ftdi = try XCTUnwrap(devices.first { $0["vid"] as? String == "0403" }, "the ttyUSB0's USB parent is listed")
        XCTAssertEqual(ftdi["address"] as? Int, 2)
        let amptek = try XCTUnwrap(devices.first { $0["vid"] as? String == "10c4" })
        XCTAssertEqual(amptek["address"] as? Int, 3, "USB devices take the addresses after the ttys")
        XCTAssertEqual(amptek["serial"] as? String, "DPP00001")
        XCTAssertEqual(try probe.ok("echo \(amptek0.selector) 10 100 2")["transfers"] as? Int, 10)
    }

    // MARK: - Control transfers

    func testControl_descriptorsAndStringsOverEndpointZero_vendorRequestsStall() throws {
        let probe = try startProbe([amptek0])
        let control = try probe.ok("control \(amptek0.selector)")
        XCTAssertEqual(control["device_descriptor_length"] as? Int, 18)
        XCTAssertEqual(control["device_descriptor_matches"] as? Bool, true, "GET_DESCRIPTOR(device) matches sysfs")
        XCTAssertEqual(control["config_length"] as? Int, 32, "9 + 9 + 2 × 7")
        XCTAssertEqual(control["config_total_length"] as? Int, 32)
        XCTAssertEqual(control["langid"] as? String, "0409")
        XCTAssertEqual(control["manufacturer"] as? String, "Amptek")
        XCTAssertEqual(control["product"] as? String, "PX5 DPP")
        XCTAssertEqual(control["serial"] as? String, "DPP00001")
        let utf16 = "DPP00001".utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        XCTAssertEqual(control["serial_utf16"] as? String, hex([UInt8(2 + utf16.count), 3] + utf16), "UTF-16LE string descriptor")
        XCTAssertEqual(control["missing_string"] as? String, "LIBUSB_ERROR_PIPE", "an unknown string index stalls")
        XCTAssertEqual(control["get_status"] as? Int, 2)
        XCTAssertEqual(control["status"] as? String, "0000")
        XCTAssertEqual(control["get_configuration"] as? Int, 1)
        XCTAssertEqual(control["configuration"] as? Int, 1)
        XCTAssertEqual(control["vendor_in"] as? String, "LIBUSB_ERROR_PIPE", "vendor requests stall")
        XCTAssertEqual(control["vendor_out"] as? String, "LIBUSB_ERROR_PIPE")
        XCTAssertEqual(control["after_stall"] as? Int, 4, "endpoint 0 works after a stall")
    }

    // MARK: - Bulk transfers

    func testBulkEcho_200TransfersOf1To32768Bytes_fourInFlight_comeBackByteForByte() throws {
        let probe = try startProbe([amptek0])
        let echo = try probe.ok("echo \(amptek0.selector) 200 1-32768 4", timeout: 60)
        XCTAssertEqual(echo["transfers"] as? Int, 200)
        XCTAssertEqual(echo["sent"] as? Int, 200)
        XCTAssertEqual(echo["mismatches"] as? Int, 0, "every byte of every transfer is checked by the probe")
        let expectedBytes = (0..<200).reduce(0) { $0 + Self.echoSize($1, min: 1, max: 32768) }
        XCTAssertEqual(echo["bytes"] as? Int, expectedBytes)
        XCTAssertEqual(echo["left_in_flight"] as? Int, 0)
        let status = try probe.harness.control("status")
        XCTAssertTrue(status.contains("served=400,in_bytes=\(expectedBytes),out_bytes=\(expectedBytes)"), status)
    }

    func testGarbage_arrivesAsTheNextINTransfer_evenWhenNotAnswering() throws {
        let probe = try startProbe([EmulatedUSBDevice(simulator: .silent)])
        try probe.harness.control("garbage usb0 00ff7e0d0a")
        let read = try probe.ok("read 1209:0001 512 2000")
        XCTAssertEqual(read["hex"] as? String, "00ff7e0d0a")
        XCTAssertEqual(read["count"] as? Int, 5)

        try probe.harness.control("stop-answering usb0")
        try probe.harness.control("garbage usb0 deadbeef")
        XCTAssertEqual(try probe.ok("read 1209:0001 512 2000")["hex"] as? String, "deadbeef")
    }

    // MARK: - Unplug and replug

    func testUnplug_pendingINTransfersEndWithNoDevice_deviceLeavesTheList_replugGetsANewAddress() throws {
        let probe = try startProbe([amptek0])
        let pending = try probe.ok("wait-unplug \(amptek0.selector) 4 5000")
        XCTAssertEqual(pending["pending"] as? Int, 4)
        XCTAssertEqual(pending["address"] as? Int, 2)
        XCTAssertTrue(try probe.harness.control("status").contains("amptek0=plugged,answering,busnum=1,devnum=2,devnode=/dev/bus/usb/001/002,inflight=4"))

        try probe.harness.control("unplug amptek0")
        let result = try probe.next()
        XCTAssertEqual(result["ok"] as? Bool, true, "\(result)")
        XCTAssertEqual(result["statuses"] as? [String], ["NO_DEVICE", "NO_DEVICE", "NO_DEVICE", "NO_DEVICE"])
        XCTAssertEqual(result["after_write"] as? String, "LIBUSB_ERROR_NO_DEVICE", "the old handle's transfers fail")
        XCTAssertEqual(result["after_control"] as? String, "LIBUSB_ERROR_NO_DEVICE")
        XCTAssertEqual(result["listed"] as? Bool, false, "libusb dropped the device")
        XCTAssertLessThan(result["seconds"] as? Double ?? 99, 2)
        XCTAssertEqual(try probe.list().filter { $0["vid"] as? String == "10c4" }.count, 0)
        XCTAssertTrue(try probe.harness.control("status").contains("amptek0=unplugged,answering,busnum=1,devnum=2,devnode=-,inflight=0"))
        XCTAssertEqual(try probe.command("echo \(amptek0.selector) 1 1 1")["ok"] as? Bool, false, "cannot be opened")

        let replug = try probe.harness.control("replug amptek0")
        XCTAssertEqual(replug, "devnum=3 devnode=/dev/bus/usb/001/003")
        let listed = try probe.list().filter { $0["vid"] as? String == "10c4" }
        XCTAssertEqual(listed.count, 1)
        XCTAssertEqual(listed.first?["address"] as? Int, 3, "a replugged device has a new address")
        XCTAssertEqual(listed.first?["serial"] as? String, "DPP00001")
        let echo = try probe.ok("echo \(amptek0.selector) 20 1-4096 4")
        XCTAssertEqual(echo["transfers"] as? Int, 20)
        XCTAssertEqual(echo["mismatches"] as? Int, 0)
    }

    func testHotplug_libusbReportsLeftAndArrivedOnUnplugAndReplug() throws {
        let probe = try startProbe([amptek0])
        let start = try probe.ok("hotplug-start")
        XCTAssertEqual(start["has_hotplug"] as? Bool, true, "libusb has LIBUSB_CAP_HAS_HOTPLUG under umockdev (udev monitor)")
        XCTAssertEqual(start["registered"] as? Bool, true)

        try probe.harness.control("unplug amptek0")
        let left = try XCTUnwrap(try probe.ok("hotplug-wait 3000 1")["events"] as? [[String: Any]])
        XCTAssertEqual(left.count, 1)
        XCTAssertEqual(left.first?["event"] as? String, "left")
        XCTAssertEqual(left.first?["vid"] as? String, "10c4")
        XCTAssertEqual(left.first?["address"] as? Int, 2)

        try probe.harness.control("replug amptek0")
        let arrived = try XCTUnwrap(try probe.ok("hotplug-wait 3000 1")["events"] as? [[String: Any]])
        XCTAssertEqual(arrived.count, 1)
        XCTAssertEqual(arrived.first?["event"] as? String, "arrived")
        XCTAssertEqual(arrived.first?["pid"] as? String, "842a")
        XCTAssertEqual(arrived.first?["address"] as? Int, 3)
    }

    // MARK: - A device that stops answering

    func testStopAnswering_INTransferTimesOut_discardDoesNotHang_resumeAnswersAgain() throws {
        let probe = try startProbe([amptek0])
        try probe.harness.control("stop-answering amptek0")
        let timeout = try probe.ok("timeout \(amptek0.selector) 300")
        XCTAssertEqual(timeout["status"] as? String, "TIMED_OUT", "libusb discards the URB and reaps it with -ENOENT")
        let elapsed = timeout["elapsed_ms"] as? Double ?? 0
        XCTAssertGreaterThanOrEqual(elapsed, 290)
        XCTAssertLessThan(elapsed, 2000)
        XCTAssertEqual(timeout["sync"] as? String, "LIBUSB_ERROR_TIMEOUT")
        XCTAssertEqual(timeout["cancel"] as? String, "OK")
        XCTAssertEqual(timeout["cancelled"] as? String, "CANCELLED")
        XCTAssertLessThan(timeout["cancel_ms"] as? Double ?? 9999, 1000)
        XCTAssertTrue(try probe.harness.control("status").contains("amptek0=plugged,stopped,busnum=1,devnum=2,devnode=/dev/bus/usb/001/002,inflight=0"),
                      "no URB is left behind")
        XCTAssertEqual(try probe.ok("write \(amptek0.selector) 0102")["count"] as? Int, 2, "OUT is still accepted")

        try probe.harness.control("resume-answering amptek0")
        let echo = try probe.ok("echo \(amptek0.selector) 5 64 2")
        XCTAssertEqual(echo["transfers"] as? Int, 5, "what was sent while stopped is gone; new transfers echo")
        XCTAssertEqual(echo["mismatches"] as? Int, 0)
    }

    func testIdle_pendingINTransfers_letTheEventLoopSleep() throws {
        let probe = try startProbe([EmulatedUSBDevice(simulator: .silent)])
        let idle = try probe.ok("idle 1209:0001 1 4")
        XCTAssertEqual(idle["transfers"] as? Int, 0)
        // libusb_handle_events_timeout_completed(100 ms) returns about 10 times a second; a node
        // that is always writable would make it return thousands of times.
        XCTAssertLessThan(idle["wakeups"] as? Int ?? 99_999, 40, "\(idle)")
        XCTAssertLessThan(idle["cpu_percent"] as? Double ?? 100, 5, "\(idle)")
    }

    /// The harness normally reads and writes URBs with process_vm_readv/writev; when it cannot
    /// (--usb-memory ioctl, or several processes hold the node) it goes through umockdev's
    /// IoctlData round trips. Both must behave the same.
    func testIoctlDataPath_echoControlAndTimeoutBehaveTheSame() throws {
        try UmockdevHarness.requireEnvironment()
        let harness = try UmockdevHarness(usbDevices: [amptek0], program: [try USBProbe.path()],
                                          extraArguments: ["--usb-memory", "ioctl"])
        harnesses.append(harness)
        try harness.waitUntilReady()
        let probe = USBProbeSession(harness: harness)
        let echo = try probe.ok("echo \(amptek0.selector) 60 1-32768 4", timeout: 60)
        XCTAssertEqual(echo["transfers"] as? Int, 60)
        XCTAssertEqual(echo["mismatches"] as? Int, 0)
        XCTAssertEqual(echo["bytes"] as? Int, (0..<60).reduce(0) { $0 + Self.echoSize($1, min: 1, max: 32768) })
        let control = try probe.ok("control \(amptek0.selector)")
        XCTAssertEqual(control["serial"] as? String, "DPP00001")
        XCTAssertEqual(control["vendor_in"] as? String, "LIBUSB_ERROR_PIPE")
        try harness.control("stop-answering amptek0")
        let timeout = try probe.ok("timeout \(amptek0.selector) 200")
        XCTAssertEqual(timeout["status"] as? String, "TIMED_OUT")
        XCTAssertEqual(timeout["cancelled"] as? String, "CANCELLED")
    }

    // MARK: - Simulator processes

    func testExecSimulator_messagesAreTransfers_longOnesSplitOverShortBuffers_restartedOnReplug() throws {
        let device = EmulatedUSBDevice(simulator: .exec([UmockdevHarness.python, "-c", Self.seqpacketSim, "{fd}", "exec"]))
        let probe = try startProbe([device])
        try probe.ok("write 1209:0001 " + hex(Array("hello".utf8)))
        XCTAssertEqual(try probe.ok("read 1209:0001 512 2000")["hex"] as? String, hex(Array("ECHO hello (exec)".utf8)))

        try probe.ok("write 1209:0001 " + hex(Array("big 100".utf8)))
        let split = try XCTUnwrap(try probe.ok("reads 1209:0001 2 64 2000")["transfers"] as? [[String: Any]])
        XCTAssertEqual(split.map { $0["count"] as? Int }, [64, 36], "a 100-byte message over 64-byte IN buffers")
        XCTAssertEqual(split.compactMap { $0["hex"] as? String }.joined(), hex((0..<100).map { UInt8($0) }))

        try probe.ok("write 1209:0001 " + hex(Array("two".utf8)))
        let two = try XCTUnwrap(try probe.ok("reads 1209:0001 2 64 2000")["transfers"] as? [[String: Any]])
        XCTAssertEqual(two.compactMap { $0["hex"] as? String }, [hex(Array("first".utf8)), hex(Array("second".utf8))],
                       "two messages are two transfers, even with room for both")

        let pid = try simulatorPid(probe)
        try probe.harness.control("unplug usb0")
        try probe.harness.control("replug usb0")
        let newPid = try simulatorPid(probe)
        XCTAssertNotEqual(pid, newPid, "a replug starts a new simulator process")
    }

    func testUnixSimulator_seqpacketServer_isReconnectedOnReplug() throws {
        try UmockdevHarness.requireEnvironment()
        let directory = try UmockdevHarness.makeTemporaryDirectory(prefix: "usbsim")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/sim.sock"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: UmockdevHarness.python)
        server.arguments = ["-c", Self.seqpacketSim, "listen:" + socketPath, "unix"]
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socketPath) { usleep(20_000) }

        let probe = try startProbe([EmulatedUSBDevice(simulator: .unix(socketPath))])
        try probe.ok("write 1209:0001 " + hex(Array("one".utf8)))
        XCTAssertEqual(try probe.ok("read 1209:0001 512 2000")["hex"] as? String, hex(Array("ECHO one (unix)".utf8)))
        try probe.harness.control("unplug usb0")
        try probe.harness.control("replug usb0")
        try probe.ok("write 1209:0001 " + hex(Array("again".utf8)))
        XCTAssertEqual(try probe.ok("read 1209:0001 512 2000")["hex"] as? String, hex(Array("ECHO again (unix)".utf8)))
    }

    /// Not a benchmark: streams 25 KB IN transfers for a second to show the path holds up.
    func testStreaming_25KBINTransfers_arriveWholeAndInOrder() throws {
        let device = EmulatedUSBDevice(simulator: .exec([UmockdevHarness.python, "-c", Self.streamSim, "{fd}", "25000"]))
        let probe = try startProbe([device])
        let bench = try probe.ok("bench 1209:0001 1 25000 8", timeout: 30)
        let transfers = bench["transfers"] as? Int ?? 0
        print("usb streaming, 25000-byte IN transfers, 8 in flight: \(transfers) transfers/s, "
              + "\(bench["mb_per_s"] ?? "?") MB/s, probe CPU \(bench["cpu_percent"] ?? "?") %")
        XCTAssertGreaterThan(transfers, 100, "\(bench)")
        XCTAssertEqual(bench["bytes"] as? Int, transfers * 25000)
        XCTAssertEqual(bench["short"] as? Int, 0)
        XCTAssertEqual(bench["failures"] as? Int, 0)
    }

    // MARK: - Helpers

    private func startProbe(_ devices: [EmulatedUSBDevice]) throws -> USBProbeSession {
        try UmockdevHarness.requireEnvironment()
        let harness = try UmockdevHarness(usbDevices: devices, program: [try USBProbe.path()])
        harnesses.append(harness)
        try harness.waitUntilReady()
        return USBProbeSession(harness: harness)
    }

    private func simulatorPid(_ probe: USBProbeSession) throws -> String {
        try probe.ok("write 1209:0001 " + hex(Array("pid".utf8)))
        let bytes = try XCTUnwrap(try probe.ok("read 1209:0001 64 2000")["hex"] as? String)
        let text = String(decoding: stride(from: 0, to: bytes.count, by: 2).compactMap {
            UInt8(bytes[bytes.index(bytes.startIndex, offsetBy: $0)..<bytes.index(bytes.startIndex, offsetBy: $0 + 2)], radix: 16)
        }, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("PID "), text)
        return text
    }

    private func endpointSummary(_ interface: [String: Any]) -> [String] {
        (interface["endpoints"] as? [[String: Any]] ?? []).map { endpoint in
            let type = endpoint["type"] as? String ?? "?"
            let interval = type == "interrupt" ? "/\(endpoint["interval"] as? Int ?? -1)" : ""
            return "\(endpoint["address"] as? String ?? "?") \(type) \(endpoint["max_packet"] as? Int ?? -1)\(interval)"
        }
    }

    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// usbprobe's echo_size(): the size of transfer j for sizes MIN-MAX.
    static func echoSize(_ j: Int, min: Int, max: Int) -> Int {
        if min == max || j == 0 { return min }
        if j == 1 { return max }
        var x = UInt32(truncatingIfNeeded: j) &* 2_654_435_761
        x ^= x >> 13
        return min + Int(x % UInt32(max - min + 1))
    }

    /// A SOCK_SEQPACKET simulator: "pid" -> "PID n", "big N" -> bytes 0..N-1, "two" -> two
    /// messages, anything else -> "ECHO <it> (<tag>)". argv: {fd} | listen:PATH, tag.
    static let seqpacketSim = """
        import os, socket, sys
        where, tag = sys.argv[1], sys.argv[2].encode()
        def serve(s):
            while True:
                m = s.recv(1 << 20)
                if not m:
                    return
                if m == b"pid":
                    s.send(b"PID %d" % os.getpid())
                elif m.startswith(b"big "):
                    s.send(bytes(i & 0xFF for i in range(int(m[4:]))))
                elif m == b"two":
                    s.send(b"first")
                    s.send(b"second")
                else:
                    s.send(b"ECHO " + m + b" (" + tag + b")")
        if where.startswith("listen:"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            server.bind(where[7:])
            server.listen(4)
            while True:
                serve(server.accept()[0])
        else:
            serve(socket.socket(fileno=int(where)))
        """

    /// Sends SIZE-byte messages as fast as the harness takes them. argv: {fd}, SIZE.
    static let streamSim = """
        import socket, sys
        s = socket.socket(fileno=int(sys.argv[1]))
        size = int(sys.argv[2])
        payload = bytes(i & 0xFF for i in range(size))
        try:
            while True:
                s.send(payload)
        except OSError:
            pass
        """
}

/// The usbprobe program under test (Tests/Support/usbprobe.c), talking JSON lines.
struct USBProbeSession {
    let harness: UmockdevHarness

    /// Sends a command; returns the decoded answer whatever its "ok".
    @discardableResult
    func command(_ line: String, timeout: TimeInterval = 15) throws -> [String: Any] {
        harness.send(line)
        return try next(timeout: timeout, after: line)
    }

    /// The next answer line (for commands that answer twice, like wait-unplug).
    func next(timeout: TimeInterval = 15, after line: String = "") throws -> [String: Any] {
        guard let answer = harness.nextLine(timeout: timeout) else {
            throw HarnessError("usbprobe did not answer \"\(line)\" within \(timeout) s")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any] else {
            throw HarnessError("usbprobe answered \"\(line)\" with \(answer)")
        }
        return object
    }

    /// Sends a command that must succeed.
    @discardableResult
    func ok(_ line: String, timeout: TimeInterval = 15) throws -> [String: Any] {
        let answer = try command(line, timeout: timeout)
        guard answer["ok"] as? Bool == true else { throw HarnessError("usbprobe \"\(line)\" failed: \(answer)") }
        return answer
    }

    /// Every device libusb lists.
    func list() throws -> [[String: Any]] {
        try ok("list")["devices"] as? [[String: Any]] ?? []
    }
}

enum USBProbe {
    static func path() throws -> String { try CProbe.path("usbprobe", pkgConfig: "libusb-1.0") }
}
