"""launch/localize.launch.py, config/localizer.yaml and the node set they share.

Always run: the launch file is executed against stand-ins of the ``launch`` / ``launch_ros``
API that offer exactly the names the real packages have (so a misspelt import or a wrong
argument shows), and what it would start is checked: arguments with descriptions, executables
in setup.py, parameter files that exist, the lifecycle events configure -> activate.
With ``launch`` and ``launch_ros`` installed (a ROS install with this package built by colcon)
the launch file is really launched and the localizer must come up active and localize.
"""

import ast
import configparser
import importlib
import importlib.util
import os
from pathlib import Path
import re
import sys
import threading
import time
import types

from lifecycle_msgs.msg import Transition
import pytest
import yaml

from imposing_ros.nodes import node_set
from imposing_ros.nodes.localizer_params import LIVE, PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'localize.launch.py'
REQUIRED_ARGUMENTS = {'params_file', 'model', 'image_topic', 'use_filter', 'rviz',
                      'use_sim_time', 'log_level', 'namespace'}

# The public names of launch / launch_ros (Humble .. Kilted) the launch file may use.
API = {
    'launch': ['LaunchDescription', 'LaunchService', 'LaunchContext'],
    'launch.actions': ['DeclareLaunchArgument', 'EmitEvent', 'GroupAction',
                       'IncludeLaunchDescription', 'LogInfo', 'OpaqueFunction',
                       'RegisterEventHandler', 'SetEnvironmentVariable'],
    'launch.conditions': ['IfCondition', 'UnlessCondition'],
    'launch.events': ['matches_action', 'Shutdown'],
    'launch.substitutions': ['LaunchConfiguration', 'PathJoinSubstitution', 'PythonExpression'],
    'launch_ros.actions': ['LifecycleNode', 'Node', 'PushRosNamespace', 'SetParameter'],
    'launch_ros.event_handlers': ['OnStateTransition'],
    'launch_ros.events.lifecycle': ['ChangeState'],
    'launch_ros.substitutions': ['FindPackageShare'],
}


class Entity:
    """Stand-in of any launch entity: records its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class Configuration(Entity):
    def perform(self, context):
        return context[self.args[0]]


def _stub_modules():
    modules = {}
    for name, names in API.items():
        module = types.ModuleType(name)
        for attr in names:
            if attr == 'matches_action':
                setattr(module, attr, lambda action: ('matches', action))
            elif attr == 'LaunchConfiguration':
                setattr(module, attr, Configuration)
            else:
                setattr(module, attr, type(attr, (Entity,), {}))
        modules[name] = module
    for parent in ('launch_ros', 'launch_ros.events'):
        modules.setdefault(parent, types.ModuleType(parent))
    return modules


@pytest.fixture
def launch_module(monkeypatch):
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('localize_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _console_scripts():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.fullmatch(r'[\w-]+ = [\w.]+:\w+', node.value):
            name, target = node.value.split(' = ')
            scripts[name] = target
    return scripts


def _run_plan(module, **values):
    description = module.generate_launch_description()
    entities = description.args[0]
    opaque = next(e for e in entities if type(e).__name__ == 'OpaqueFunction')
    context = {arg.name: arg.default for arg in node_set.LAUNCH_ARGUMENTS}
    context.update(values)
    return entities, opaque.kwargs['function'](context)


def test_launch_file_declares_described_arguments(launch_module):
    entities, _ = _run_plan(launch_module)
    declared = {e.args[0]: e.kwargs for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    assert REQUIRED_ARGUMENTS <= set(declared)
    for name, kwargs in declared.items():
        assert len(kwargs.get('description', '')) > 15, name
        assert 'default_value' in kwargs, name
    assert declared['use_filter']['choices'] == ['true', 'false']
    # The file parses to one generate_launch_description() -> LaunchDescription.
    tree = ast.parse(LAUNCH.read_text())
    functions = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert 'generate_launch_description' in functions


def test_launch_file_starts_the_node_set(launch_module, tmp_path):
    scripts = _console_scripts()
    params = tmp_path / 'mine.yaml'
    params.write_text('/**/imposing_localizer:\n  ros__parameters:\n    min_score: 0.3\n')
    _, actions = _run_plan(launch_module, params_file=str(params), model='m.pt',
                           image_topic='/cam/image', use_sim_time='true', namespace='robot1')
    nodes = [a for a in actions if type(a).__name__ in ('Node', 'LifecycleNode')]
    assert [n.kwargs['name'] for n in nodes] == [s.name for s in node_set.NODES]
    for node in nodes:
        kw = node.kwargs
        assert kw['package'] == 'imposing_ros'
        assert kw['executable'] in scripts, f"{kw['executable']} is not in setup.py"
        assert kw['namespace'] == 'robot1'
        files, overrides = kw['parameters'][:-1], kw['parameters'][-1]
        assert all(Path(f).is_file() for f in files), files
        assert files[-1] == str(params)
        assert overrides['use_sim_time'] is True
        assert kw['ros_arguments'] == ['--log-level', 'info']
    localizer = nodes[0]
    assert type(localizer).__name__ == 'LifecycleNode'
    assert localizer.kwargs['parameters'][-1]['image_topic'] == '/cam/image'
    assert localizer.kwargs['parameters'][-1]['model_path'].endswith('m.pt')
    # configure is emitted at start, activate once the node reaches 'inactive'.
    emits = [a for a in actions if type(a).__name__ == 'EmitEvent']
    assert [e.kwargs['event'].kwargs['transition_id'] for e in emits] == \
        [Transition.TRANSITION_CONFIGURE]
    assert emits[0].kwargs['event'].kwargs['lifecycle_node_matcher'] == ('matches', localizer)
    handler = next(a for a in actions if type(a).__name__ == 'RegisterEventHandler')
    on_state = handler.args[0]
    assert on_state.kwargs['target_lifecycle_node'] is localizer
    assert on_state.kwargs['goal_state'] == 'inactive'
    activate = [e for e in on_state.kwargs['entities'] if type(e).__name__ == 'EmitEvent']
    assert activate[0].kwargs['event'].kwargs['transition_id'] == \
        Transition.TRANSITION_ACTIVATE
    # Without the filter only the localizer starts.
    _, actions = _run_plan(launch_module, use_filter='false')
    started = [a.kwargs['name'] for a in actions
               if type(a).__name__ in ('Node', 'LifecycleNode')]
    assert started == ['imposing_localizer']


def test_launch_rviz_config_and_bad_arguments(launch_module):
    entities, _ = _run_plan(launch_module)
    rviz = next(e for e in entities if type(e).__name__ == 'Node')
    assert rviz.kwargs['executable'] == 'rviz2'
    assert Path(rviz.kwargs['arguments'][1]).is_file()
    assert type(rviz.kwargs['condition']).__name__ == 'IfCondition'
    config = yaml.safe_load(Path(rviz.kwargs['arguments'][1]).read_text())
    topics = {d['Name']: d.get('Topic', {}) for d in config['Visualization Manager']['Displays']}
    assert topics['Localizer pose']['Value'] == '/imposing_localizer/pose'
    assert topics['Localizer pose']['Reliability Policy'] == 'Reliable'
    assert topics['Candidates']['Value'] == '/imposing_localizer/candidates'
    assert topics['Camera']['Reliability Policy'] == 'Best Effort'
    assert 'TF' in topics and 'Filtered odometry' in topics
    with pytest.raises(ValueError, match='log_level must be one of'):
        _run_plan(launch_module, log_level='loud')
    with pytest.raises(FileNotFoundError, match='params_file'):
        _run_plan(launch_module, params_file='/no/such.yaml')


def test_node_set_modules_and_executables_agree():
    scripts = _console_scripts()
    for spec in node_set.NODES:
        assert scripts[spec.executable] == f'{spec.module}:main'
        assert node_set.config_file(spec.params_file).is_file(), \
            f'config/{spec.params_file} is missing'
        module = importlib.import_module(spec.module)
        assert hasattr(module, spec.class_name) and hasattr(module, 'main')
    assert node_set.config_file(node_set.RVIZ_CONFIG).is_file()
    # The packaged files are installed: setup.py ships launch/ and config/ to the share dir.
    setup = (ROOT / 'setup.py').read_text()
    assert "glob('launch/*.py')" in setup and "glob('config/*.yaml')" in setup
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    assert cfg['install']['install_scripts'] == '$base/lib/imposing_ros'  # where launch looks


def test_localizer_yaml_documents_every_parameter():
    text = (ROOT / 'config' / 'localizer.yaml').read_text()
    block = yaml.safe_load(text)['/**/imposing_localizer']['ros__parameters']
    defaults = {name: default for name, default, _, _ in PARAMETERS}
    assert set(block) == set(defaults)
    for name, value in block.items():
        assert value == defaults[name], f'{name}: yaml {value!r} != node {defaults[name]!r}'
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r'\s{4}([\w.]+):', line)
        if not match:
            continue
        comment = []
        j = i - 1
        while lines[j].strip().startswith('#'):
            comment.insert(0, lines[j])
            j -= 1
        comment = ' '.join(comment)
        name = match.group(1)
        assert 'Default' in comment or 'default' in comment, f'{name}: no default in comment'
        assert ('(live)' in comment) == (name in LIVE), f'{name}: live/configure mark wrong'


# --- the real launch, where a ROS install has it ----------------------------------------------

@pytest.mark.ros
@pytest.mark.slow
def test_launch_brings_localizer_to_active_and_localizes(tmp_path):
    launch = pytest.importorskip('launch', reason='launch is not installed (no ROS install)')
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS install)')
    ament = pytest.importorskip('ament_index_python.packages')
    try:
        ament.get_package_prefix('imposing_ros')
    except Exception:
        pytest.skip('imposing_ros is not built into an ament prefix (colcon build)')
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from lifecycle_msgs.msg import State
    from node_harness import build_tiny_checkpoint, Harness, localize, write_params

    model, road = build_tiny_checkpoint(tmp_path / 'tiny.pt')
    params = write_params(tmp_path / 'params.yaml')
    description = launch.LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH)),
        launch_arguments={'model': str(model), 'params_file': str(params),
                          'image_topic': '/camera/image_raw', 'use_filter': 'false'}.items())])
    service = launch.LaunchService()
    service.include_launch_description(description)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    harness = Harness()
    try:
        deadline = time.monotonic() + 120
        while True:  # the launch file configures and activates by itself
            try:
                if harness.state() == State.PRIMARY_STATE_ACTIVE:
                    break
            except AssertionError:
                pass
            assert time.monotonic() < deadline, 'the launched localizer never became active'
            time.sleep(0.5)
        localize(harness, road)
    finally:
        harness.close()
        service.shutdown()
        thread.join(timeout=30)


@pytest.mark.ros
def test_run_command_reports_a_bad_model(tmp_path):
    """``imposing-ros run`` (the launch file's twin) fails with the configure error, exit 2."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'run', '--model', str(tmp_path / 'no.pt'),
         '--use-filter', 'false', '--duration', '5'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f'checkpoint {tmp_path / "no.pt"}: file not found' in proc.stderr
    assert 'imposing_localizer: configure failed' in proc.stderr
    # A bad value in a parameter file (loaded before the node's set-callback exists) is caught
    # at configure with the same reason the callback gives.
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**/imposing_localizer:\n  ros__parameters:\n    device: tpu\n')
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'run', '--params', str(bad), '--use-filter',
         'false', '--duration', '5'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "parameter device must be auto, cpu, cuda or cuda:N (got 'tpu')" in proc.stderr


def test_parameter_files_with_unknown_keys_or_wrong_types_are_refused(tmp_path):
    """A typo or a wrong type stops start-up naming the key, the type and the file."""
    import subprocess

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    bad = tmp_path / 'typos.yaml'
    bad.write_text('/**/imposing_localizer:\n  ros__parameters:\n'
                   '    search.num_candidatez: 512\n    search.levels: many\n'
                   '    min_score: 1\n')
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'run', '--params', str(bad), '--use-filter',
         'false', '--duration', '5'], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown parameter 'search.num_candidatez' (did you mean 'search.num_candidates'?)" \
        in proc.stderr
    assert "search.levels must be a integer, got 'many'" in proc.stderr
    assert str(bad) in proc.stderr
    assert 'min_score' not in proc.stderr  # 1 for a double is taken as 1.0
    # The node's own executable (ros2 run) refuses the same file.
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.nodes.motion_filter_node', '--ros-args',
         '--params-file', str(_filter_file(tmp_path))], capture_output=True, text=True,
        timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown parameter 'filter.alpha_tran' (did you mean 'filter.alpha_trans'?)" in \
        proc.stderr + proc.stdout


def _filter_file(folder):
    path = folder / 'filter.yaml'
    path.write_text('/**/imposing_motion_filter:\n  ros__parameters:\n'
                    '    filter.alpha_tran: 0.1\n    filter.history_s: 5\n')
    return path


def test_run_stops_cleanly_after_its_duration(tmp_path):
    import subprocess

    from node_harness import build_tiny_checkpoint

    model, _ = build_tiny_checkpoint(tmp_path / 'tiny.pt')
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID='84',
               OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'run', '--model', str(model), '--duration',
         '2'], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'never retrieved' not in proc.stderr + proc.stdout


def test_runner_passes_every_parameter_file(tmp_path):
    from imposing_ros.nodes.runner import ros_arguments

    mine = tmp_path / 'mine.yaml'
    mine.write_text('{}\n')
    launches = node_set.plan(str(mine), use_filter='false', log_level='debug')
    args = ros_arguments(launches)
    files = [args[i + 1] for i, a in enumerate(args) if a == '--params-file']
    assert files == [str(node_set.config_file('localizer.yaml')), str(mine)]
    assert args[-2:] == ['--log-level', 'debug']
    # With the filter: the shared file comes after both packaged files, so its block for the
    # filter wins over the filter's defaults (it came before them once: map_frame was lost).
    both = ros_arguments(node_set.plan(str(mine), use_filter='true'))
    files = [both[i + 1] for i, a in enumerate(both) if a == '--params-file']
    assert files == [str(node_set.config_file('localizer.yaml')),
                     str(node_set.config_file('motion_filter.yaml')), str(mine)]
