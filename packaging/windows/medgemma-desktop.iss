; Inno Setup 6 script for MedGemma Desktop on Windows (x64).
; Packs the PyInstaller one-folder build (packaging/medgemma-desktop.spec) into one Setup.exe.
; UNTESTED: written on Linux, where it cannot be compiled; see packaging/README.md for the steps.
;
;   python packaging\build.py --freeze-only                  -> packaging\dist\cpu\pyinstaller\medgemma-desktop\
;   iscc /DAppVersion=0.1.0 /DFlavor=cpu packaging\windows\medgemma-desktop.iss
;   python packaging\build.py --freeze-only --flavour cuda   -> packaging\dist\cuda\pyinstaller\medgemma-desktop\
;   iscc /DAppVersion=0.1.0 /DFlavor=cuda packaging\windows\medgemma-desktop.iss
;
; Installs per user by default (no administrator needed, as on locked-down research workstations); the
; user may choose "all users" in the first dialog. Uninstall removes the program folder only: conversations,
; settings, logs and the model folders the user downloaded are left alone.

#ifndef AppVersion
  #error Pass the version: iscc /DAppVersion=0.1.0
#endif
#ifndef Flavor
  #define Flavor "cpu"
#endif
#define AppName "MedGemma Desktop"
#define ExeName "medgemma-desktop.exe"
#define SourceDir "..\dist\" + Flavor + "\pyinstaller\medgemma-desktop"

[Setup]
; Never change AppId: upgrades and uninstall find the installed copy by it.
AppId={{8E7AA949-4569-4DB0-ACFB-DE0C2F5DD31E}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=MedGemma Desktop maintainers
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0.17763
; The licence page shows the app's licence; the page before it says plainly that no weights are included.
LicenseFile=..\notices\LICENSE-medgemma-desktop.txt
InfoBeforeFile=..\notices\HAI-DEF-NOTICE.txt
SetupIconFile=medgemma-desktop.ico
UninstallDisplayIcon={app}\{#ExeName}
OutputDir=..\dist\{#Flavor}
OutputBaseFilename=medgemma-desktop-{#AppVersion}-windows-x64-{#Flavor}-setup
; torch's DLLs are large and already dense: lzma2 at normal level compresses them nearly as well as ultra in a
; fraction of the time. Non-solid so that a damaged download fails on one file, not all of them.
Compression=lzma2/normal
SolidCompression=no
; Inno Setup needs disk spanning above 4.2 GB compressed; the CUDA build is expected below that (README).
DiskSpanning=no
WizardStyle=modern
CloseApplications=yes
ChangesAssociations=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[InstallDelete]
; An upgrade must not keep libraries from the previous version beside the new ones.
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#ExeName}"; Comment: "Ask MedGemma about medical images, offline. Research use only."
Name: "{autoprograms}\{#AppName} notices"; Filename: "{app}\_internal\notices"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#ExeName}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#ExeName}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
