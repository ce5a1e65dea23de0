// What the function app's managed identity may do, each grant on the narrowest scope.

@description('Principal (object) id of the function app\'s system-assigned identity.')
param principalId string

param serviceBusName string
param storageName string
param workspaceName string
param keyVaultName string
param appInsightsName string
param vnetName string
param amlSubnetName string = 'aml'
param amlNsgName string

@description('Let the app create clusters a request names (AzureML Compute Operator + join the aml subnet).')
param allowClusterCreation bool = true

var role = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  azureMLComputeOperator: 'e503ece1-11d0-4e8e-8e2c-7a6c3bf38815'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  networkContributor: '4d97b98b-1d4f-4787-a291-c67834d212e7'
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' existing = {
  name: vnetName
}

resource amlSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-11-01' existing = {
  parent: vnet
  name: amlSubnetName
}

resource amlNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' existing = {
  name: amlNsgName
}

// Service Bus: receive requests and completions (triggers), send completions, deferrals, rejections.
resource sbSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, principalId, role.serviceBusDataSender)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource sbReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, principalId, role.serviceBusDataReceiver)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.serviceBusDataReceiver)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Host storage (timer leases, deployment package) and the run table.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, role.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, role.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Azure ML: submit, watch and cancel runs in the workspace.
resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, role.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Creating a cluster is not part of AzureML Data Scientist; joining it to the subnet needs
// subnets/join/action on that subnet.
resource computeOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (allowClusterCreation) {
  name: guid(workspace.id, principalId, role.azureMLComputeOperator)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.azureMLComputeOperator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource subnetJoin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (allowClusterCreation) {
  name: guid(amlSubnet.id, principalId, role.networkContributor)
  scope: amlSubnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The NSG check before each submit reads the aml subnet (granted above, or:) and its NSG.
resource nsgReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(amlNsg.id, principalId, role.reader)
  scope: amlNsg
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource vnetReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!allowClusterCreation) {
  name: guid(vnet.id, principalId, role.reader)
  scope: vnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references in app settings (webhook signing secrets).
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, role.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with local auth disabled takes telemetry from Entra identities only.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, role.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
